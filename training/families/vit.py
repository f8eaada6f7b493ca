"""Vision Transformer family: image classification (``fashion`` = Fashion-MNIST, or a user image folder).

A ``transformers`` ViTForImageClassification built from a ViTConfig (no pretrained weights),
optionally with a convolutional stem in place of the patch projection (the quick preset's), trained
with random horizontal flips, small random shifts, optional random erasing and label smoothing. Images are
turned into tensors by :mod:`modelkit.image`, the code the service runs, and the test split
is scored through :class:`modelkit.runtimes.image_classifier.ImageClassifierRuntime`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from modelkit import image as image_processing
from modelkit.manifest import ImagePreprocessing, Postprocessing

from ..config import ConfigError, DataConfig, ModelConfig
from ..data.fashion import load_fashion_mnist
from ..data.image_folder import load_image_folder
from ..family import Assets, Evaluation, Family, GraphExport, Splits
from ..metrics import single_label_metrics
from ..plots import confusion_matrix_plot

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
BASELINE = "logreg_pixels"


class ImageDataConfig(DataConfig):
    """``path``: an image folder ``root/<label>/*.png|jpg``; None = Fashion-MNIST."""

    max_test: int | None = Field(None, ge=10)  # cap on the test split (smoke preset)
    labels: list[str] | None = None  # fixed label set/order for an image folder
    baseline_max_train: int = Field(10_000, ge=10)  # logistic-regression subsample (keeps it ~1 min)


class ViTParams(BaseModel):
    """Architecture, input format and augmentation."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    image_size: int = Field(28, ge=4)
    channels: Literal[1, 3] = 1
    invert: bool | None = None  # None: True for Fashion-MNIST (see training/data/fashion.py), False for folders
    patch_size: int = Field(7, ge=1)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    flip: bool = True  # random horizontal flip
    max_shift: int = Field(2, ge=0)  # random shift in pixels (edge pixels repeated)
    # "conv": the patch projection becomes 3x3 stride-2 convolutions (``stem_channels``, GELU after
    # each) and a 3x3 convolution to ``hidden_size`` with stride 1 or 2, landing on the same
    # image_size / patch_size grid of tokens as the plain patch projection
    stem: Literal["patch", "conv"] = "patch"
    stem_channels: list[int] = Field(default_factory=lambda: [32, 64])
    erase_prob: float = Field(0.0, ge=0, le=1)  # random erasing: chance per image of one blanked rectangle
    erase_max_area: float = Field(0.25, gt=0, le=1)  # its largest share of the image

    @model_validator(mode="after")
    def _check_shapes(self) -> "ViTParams":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.stem == "conv":
            conv_stem_final_stride(self.image_size, self.patch_size, self.stem_channels)
        return self


def conv_stem_final_stride(image_size: int, patch_size: int, channels: list[int]) -> int:
    """Stride (1 or 2) of the conv stem's last convolution that gives the patch grid; ValueError if none does."""
    side = image_size
    for _ in channels:
        side = (side + 1) // 2  # 3x3, stride 2, padding 1
    grid = image_size // patch_size
    for stride in (1, 2):
        if (side + stride - 1) // stride == grid:
            return stride
    raise ValueError(
        f"a conv stem of {len(channels)} stride-2 convolutions gives a {side}x{side} map, which cannot become "
        f"the {grid}x{grid} token grid of image_size {image_size} / patch_size {patch_size}"
    )


class ViTModelConfig(ModelConfig):
    family: Literal["vit"] = "vit"
    data: ImageDataConfig = Field(default_factory=ImageDataConfig)
    model: ViTParams = Field(default_factory=ViTParams)


def _gate(min_accuracy: float, max_below_baseline: float | None = None) -> dict:
    criteria = [{"metric": "accuracy", "min_value": min_accuracy}]
    if max_below_baseline is not None:
        criteria.append({"metric": "accuracy", "baseline": BASELINE, "max_below_baseline": max_below_baseline})
    return {"criteria": criteria}


PRESETS: dict[str, dict] = {
    # seconds: a few hundred images, a one-layer model, a handful of steps
    "smoke": {
        "data": {"max_examples": 400, "max_test": 256, "baseline_max_train": 400},
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 128, "lr": 2e-3, "max_steps_per_epoch": 4, "progress": False},
        "export": {"parity_inputs": 256, "latency_repeats": 3},
        "gate": _gate(0.0),
    },
    # 2-core CPU, conv stem: 20 epochs of ~40 s (2 threads, machine shared with other jobs); test accuracy
    # 0.900 measured (seed 13). The patch projection gave 0.883 / 0.879 (seeds 13 / 7, 18 epochs); the
    # conv stem with random erasing (p 0.25) 0.8985 in 18 epochs
    "quick": {
        "model": {"stem": "conv"},
        "train": {
            "epochs": 20,
            "batch_size": 128,
            "eval_batch_size": 512,
            "lr": 1e-3,
            "weight_decay": 0.05,
            "warmup_ratio": 0.05,
            "schedule": "cosine",
            "patience": 3,
        },
        # a point under the measured 0.900: the old patch-projection ViT (0.883) fails it
        "gate": _gate(0.89, max_below_baseline=0.0),
    },
    # GPU: the quick preset's conv stem onto a 7x7 grid (patch 4: 49 tokens), wider and deeper, random
    # erasing, an average of the weights, a longer schedule. Measured on an H200 (2026-11-28, four other
    # trainings sharing it): test accuracy 0.912 after 60 epochs of ~5.5 s, validation still rising (0.9187)
    "full": {
        "model": {
            "stem": "conv",
            "erase_prob": 0.25,
            "patch_size": 4,
            "hidden_size": 256,
            "num_layers": 6,
            "num_heads": 8,
            "intermediate_size": 512,
            "dropout": 0.1,
        },
        "train": {
            "epochs": 60,
            "batch_size": 256,
            "eval_batch_size": 1024,
            "lr": 1e-3,
            "weight_decay": 0.05,
            "warmup_ratio": 0.05,
            "schedule": "cosine",
            "patience": 8,
            "ema_decay": 0.999,
        },
        "gate": _gate(0.92, max_below_baseline=0.0),
    },
}


def preprocessing(cfg: ViTModelConfig, train_images: np.ndarray, *, invert_default: bool) -> ImagePreprocessing:
    """Manifest preprocessing with per-channel mean/std measured on the training split."""
    p = cfg.model
    invert = invert_default if p.invert is None else p.invert
    unit = ImagePreprocessing(image_size=p.image_size, channels=p.channels, mean=[0.0] * p.channels,
                              std=[1.0] * p.channels, invert=invert)
    pixels = image_processing.to_model_pixels(train_images, unit)
    mean = pixels.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(pixels.std(axis=(0, 2, 3), dtype=np.float64), 1e-3)
    return unit.model_copy(update={"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]})


def augment(x: "torch.Tensor", generator: "torch.Generator", *, flip: bool, max_shift: int) -> "torch.Tensor":
    """Random horizontal flip and random shift (edge pixels repeated) of an NCHW batch."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if max_shift:
        s = max_shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * s)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    return x


def conv_stem(p: ViTParams) -> "torch.nn.Module":
    """Convolutions in place of the patch projection (early convolutions train ViTs faster and better
    on small images); exposes ``weight`` because transformers' ViT reads the projection's dtype from it."""
    import torch

    class ConvStem(torch.nn.Sequential):
        @property
        def weight(self):
            return self[-1].weight

    layers, c_in = [], p.channels
    for c in p.stem_channels:
        layers += [torch.nn.Conv2d(c_in, c, 3, stride=2, padding=1), torch.nn.GELU()]
        c_in = c
    stride = conv_stem_final_stride(p.image_size, p.patch_size, p.stem_channels)
    layers.append(torch.nn.Conv2d(c_in, p.hidden_size, 3, stride=stride, padding=1))
    return ConvStem(*layers)


def random_erase(x: "torch.Tensor", generator: "torch.Generator", *, prob: float, max_area: float) -> "torch.Tensor":
    """Blank one random rectangle (to the image mean) in a ``prob`` share of an NCHW batch."""
    import torch

    n, _, h, w = x.shape
    hit = torch.rand(n, generator=generator) < prob
    area = torch.rand(n, generator=generator) * (max_area - 0.02) + 0.02
    aspect = torch.exp((torch.rand(n, generator=generator) - 0.5) * 2 * 1.2)  # log-uniform in [0.3, 3.3]
    eh = (torch.sqrt(area * aspect) * h).round().clamp(1, h).long()
    ew = (torch.sqrt(area / aspect) * w).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & hit[:, None, None])[:, None]
    return torch.where(mask, x.mean(dim=(2, 3), keepdim=True), x)


def _logits_module(model):
    """Wrap a HF classifier so the exported graph maps pixel_values -> logits only."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return Logits(model).cpu().eval()  # export and parity run on the CPU


class ViTFamily(Family):
    task = "image-classification"
    config_class = ViTModelConfig
    headline_metric = "accuracy"

    def presets(self) -> dict[str, dict]:
        return {name: {"family": "vit", **preset} for name, preset in PRESETS.items()}

    # --- data and baselines -------------------------------------------------------
    def prepare_data(self, cfg: ViTModelConfig, data_dir: Path) -> Splits:
        d = cfg.data
        if d.path is None:
            if cfg.model.channels != 1 or cfg.model.image_size != 28:
                raise ConfigError(f"{self.name}: Fashion-MNIST is 28x28 greyscale; set model.channels=1, model.image_size=28")
            splits = load_fashion_mnist(seed=d.seed, val_fraction=d.val_fraction, max_examples=d.max_examples,
                                        max_test=d.max_test)
            invert_default = True
        else:
            probe = ImagePreprocessing(image_size=cfg.model.image_size, channels=cfg.model.channels,
                                       mean=[0.0] * cfg.model.channels, std=[1.0] * cfg.model.channels)
            splits = load_image_folder(d.path, probe, seed=d.seed, validation_fraction=d.val_fraction,
                                       test_fraction=d.test_fraction, labels=d.labels, max_per_label=None)
            invert_default = False
        splits.state["prep"] = preprocessing(cfg, splits.train.x, invert_default=invert_default)
        splits.state["tensors"] = {}
        return splits

    def tensors(self, splits: Splits, split: str) -> np.ndarray:
        """float32 NCHW model input of a split, via modelkit.image (cached)."""
        cache = splits.state.setdefault("tensors", {})
        if split not in cache:
            cache[split] = image_processing.preprocess_array(getattr(splits, split).x, splits.state["prep"])
        return cache[split]

    def baselines(self, cfg: ViTModelConfig, splits: Splits) -> dict[str, dict[str, float]]:
        """Multinomial logistic regression on normalized pixels.

        Fit on a seeded subsample (``data.baseline_max_train``) with lbfgs capped at 200
        iterations, which keeps it around a minute on two cores; it has not fully converged
        by then, so the cap's warning is silenced rather than printed every run.
        """
        x = self.tensors(splits, "train").reshape(len(splits.train), -1)
        y = np.asarray(splits.train.y)
        n = cfg.data.baseline_max_train
        if len(y) > n:
            take = np.sort(np.random.default_rng(cfg.data.seed).permutation(len(y))[:n])
            x, y = x[take], y[take]
        clf = LogisticRegression(max_iter=200, C=0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        pred = clf.predict(self.tensors(splits, "test").reshape(len(splits.test), -1))
        return {BASELINE: _scores(splits.test.y, pred)}

    # --- training -----------------------------------------------------------------
    def build_model(self, cfg: ViTModelConfig, splits: Splits):
        from transformers import ViTConfig, ViTForImageClassification

        p = cfg.model
        config = ViTConfig(
            image_size=p.image_size,
            patch_size=p.patch_size,
            num_channels=p.channels,
            hidden_size=p.hidden_size,
            num_hidden_layers=p.num_layers,
            num_attention_heads=p.num_heads,
            intermediate_size=p.intermediate_size,
            hidden_dropout_prob=p.dropout,
            attention_probs_dropout_prob=p.attention_dropout,
            num_labels=len(splits.labels),
            id2label=dict(enumerate(splits.labels)),
            label2id={label: i for i, label in enumerate(splits.labels)},
            label_smoothing=p.label_smoothing,  # read by loss()
        )
        model = ViTForImageClassification(config)
        if p.stem == "conv":
            model.vit.embeddings.patch_embeddings.projection = conv_stem(p)
        return model

    def batches(self, cfg: ViTModelConfig, splits: Splits, split: str, *, shuffle: bool, seed: int) -> Iterator[dict]:
        """Batches of {"pixel_values", "labels"}; the shuffled train split is augmented."""
        import torch

        x = torch.from_numpy(self.tensors(splits, split))
        y = torch.as_tensor(np.asarray(getattr(splits, split).y), dtype=torch.long)
        size = cfg.train.batch_size if split == "train" else cfg.train.eval_batch_size
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
        train_aug = shuffle and split == "train"
        for start in range(0, len(y), size):
            idx = order[start : start + size]
            pixels = x[idx]
            if train_aug:
                pixels = augment(pixels, generator, flip=cfg.model.flip, max_shift=cfg.model.max_shift)
                if cfg.model.erase_prob:
                    pixels = random_erase(pixels, generator, prob=cfg.model.erase_prob, max_area=cfg.model.erase_max_area)
            yield {"pixel_values": pixels, "labels": y[idx]}

    def loss(self, model, batch: dict):
        import torch.nn.functional as F

        from ..distributed import unwrap
        from ..trainer import model_device

        device = model_device(model)  # batches are built on the CPU
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        return F.cross_entropy(logits, batch["labels"].to(device), label_smoothing=unwrap(model).config.label_smoothing)

    def val_outputs(self, model, cfg: ViTModelConfig, splits: Splits, rows: np.ndarray) -> list:
        """Predicted class id per validation row."""
        import torch

        from ..trainer import model_device

        was_training = model.training
        model.eval()
        device = model_device(model)
        x = self.tensors(splits, "val")
        size = cfg.train.eval_batch_size
        preds: list[int] = []
        with torch.no_grad():
            for start in range(0, len(rows), size):
                pixels = torch.from_numpy(x[rows[start : start + size]]).to(device)
                preds.extend(model(pixel_values=pixels).logits.argmax(1).cpu().tolist())
        model.train(was_training)
        return preds

    def val_metrics(self, outputs: list, cfg: ViTModelConfig, splits: Splits) -> dict[str, float]:
        return _scores(splits.val.y, np.asarray(outputs, dtype=np.int64))

    # --- export and evaluation ----------------------------------------------------
    def write_assets(self, model, cfg: ViTModelConfig, splits: Splits, staging: Path) -> Assets:
        """A sample PNG per label (as clients send them) plus the preprocessing record."""
        prep: ImagePreprocessing = splits.state["prep"]
        samples = Path(staging) / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        y = np.asarray(splits.test.y)
        written = {}
        for i, label in enumerate(splits.labels):
            hits = np.flatnonzero(y == i)
            if hits.size:
                name = f"{i:02d}-{_slug(label)}.png"
                (samples / name).write_bytes(image_processing.encode_png(splits.test.x[hits[0]]))
                written[name] = label
        (samples / "labels.json").write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
        return Assets(preprocessing=prep, postprocessing=Postprocessing(activation="softmax"))

    def export_graphs(self, model, cfg: ViTModelConfig, splits: Splits) -> list[GraphExport]:
        x = self.tensors(splits, "test")
        n = min(len(x), max(cfg.export.parity_inputs, cfg.export.latency_batch))
        step = cfg.export.latency_batch
        samples = [{INPUT_NAME: x[i : i + step]} for i in range(0, n, step)]
        return [
            GraphExport(
                role="model",
                module=_logits_module(model),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                sample_inputs=samples,
            )
        ]

    def evaluate(self, runtime, cfg: ViTModelConfig, splits: Splits) -> Evaluation:
        """Test accuracy / macro-F1 from the runtime's answers on the stored test images."""
        label_id = {label: i for i, label in enumerate(splits.labels)}
        preds, features = [], []
        size = cfg.train.eval_batch_size
        for start in range(0, len(splits.test), size):
            items = [runtime.validate(img) for img in splits.test.x[start : start + size]]
            for result in runtime.predict(items, top_k=1):
                preds.append(label_id[result["labels"][0]["label"]])
                features.append(result["features"])
        y_true = np.asarray(splits.test.y)
        y_pred = np.asarray(preds)
        return Evaluation(
            metrics=_scores(y_true, y_pred),
            predictions=preds,
            features=features,
            details={"y_true": y_true.tolist(), "y_pred": y_pred.tolist()},
        )

    def plots(self, evaluation: Evaluation, splits: Splits, out_dir: Path) -> list[Path]:
        """Row-normalized confusion matrix of the test split."""
        details = evaluation.details
        return [confusion_matrix_plot(details["y_true"], details["y_pred"], splits.labels, Path(out_dir))]

    def card_notes(self, cfg: ViTModelConfig, splits: Splits) -> dict[str, str]:
        prep: ImagePreprocessing = splits.state["prep"]
        convention = (
            "dark object on a light background (the manifest's `invert: true` turns it into the light-on-dark "
            "form Fashion-MNIST is stored in)" if prep.invert else "the same convention as the training images"
        )
        return {
            "data": (
                f"{splits.dataset.source}; splits {splits.dataset.split_sizes} (seed {splits.dataset.seed}); "
                "validation is a stratified share of the training set, no image in two splits."
            ),
            "intended use": (
                f"Classifying single, centred {prep.image_size}x{prep.image_size} "
                f"{'greyscale' if prep.channels == 1 else 'RGB'} images of one item into {len(splits.labels)} "
                f"classes ({', '.join(splits.labels)}). Inputs are expected as {convention}; any size is "
                "resized (bilinear), which distorts non-square images."
            ),
            "limits": (
                "Trained from scratch on small, centred, low-resolution product images: photos with clutter, "
                "several items, other backgrounds or off-centre items are out of distribution and are still "
                "forced into one of the classes. In Fashion-MNIST, Shirt / T-shirt / Pullover / Coat are "
                "usually the most confused classes (see the confusion matrix)."
            ),
        }


def _scores(y_true, y_pred) -> dict[str, float]:
    return single_label_metrics(np.asarray(y_true), np.asarray(y_pred))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


MODELS = {"fashion": ViTFamily("fashion")}
