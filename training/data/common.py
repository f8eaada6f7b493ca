"""Labelled-example files, deduplication, seeded splits and dataset fingerprints."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from ..family import DataError

LABEL_SEPARATOR = "|"  # multi-label CSV cells: "net|web"


@dataclass
class Example:
    text: str
    labels: tuple[str, ...]  # exactly one for single-label tasks
    where: str  # "file:line" for error messages


def normalize_key(text: str) -> str:
    """Key that decides duplicates: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _check_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty text")
    return text.strip()


def _labels(value, where: str, multi_label: bool) -> tuple[str, ...]:
    if isinstance(value, list):
        labels = [str(v).strip() for v in value]
    elif isinstance(value, str):
        labels = [v.strip() for v in value.split(LABEL_SEPARATOR)] if multi_label else [value.strip()]
    elif value is None:
        raise DataError(f"{where}: missing label")
    else:
        labels = [str(value)]
    if not multi_label and len(labels) != 1:
        raise DataError(f"{where}: expected one label, got {len(labels)}")
    if any(not lab for lab in labels) or (not labels):
        raise DataError(f"{where}: empty label")
    return tuple(labels)


def read_labelled_file(path: str | Path, *, multi_label: bool) -> list[Example]:
    """Read a user CSV (header ``text,label``) or JSONL (``{"text": ..., "label"/"labels": ...}``).

    Multi-label CSV cells separate labels with ``|``. Raises DataError naming file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 ({exc})") from None
    examples: list[Example] = []
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "text" not in row:
                raise DataError(f"{where}: expected an object with 'text' and 'label' (or 'labels')")
            label = row.get("labels", row.get("label"))
            examples.append(Example(_check_text(row["text"], where), _labels(label, where, multi_label), where))
    elif p.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        fields = reader.fieldnames or []
        label_col = "labels" if "labels" in fields else "label"
        if "text" not in fields or label_col not in fields:
            raise DataError(f"{p}:1: header must name columns 'text' and 'label' (got {fields})")
        for row in reader:
            where = f"{p}:{reader.line_num}"
            examples.append(
                Example(_check_text(row["text"], where), _labels(row[label_col], where, multi_label), where)
            )
    else:
        raise DataError(f"{p}: unsupported file type {p.suffix!r} (use .csv, .tsv or .jsonl)")
    if not examples:
        raise DataError(f"{p}: no examples (only a header or blank lines)")
    return examples


def check_labels(examples: Sequence[Example], allowed: Sequence[str] | None) -> None:
    """DataError at the first example whose label is not in ``allowed`` (None = any)."""
    if allowed is None:
        return
    ok = set(allowed)
    for ex in examples:
        bad = [lab for lab in ex.labels if lab not in ok]
        if bad:
            raise DataError(f"{ex.where}: unknown label {bad[0]!r} (allowed: {', '.join(sorted(ok))})")


def deduplicate(examples: Sequence[Example], *, multi_label: bool) -> list[Example]:
    """One example per normalized text: multi-label unions the labels, single-label keeps the first."""
    seen: dict[str, Example] = {}
    for ex in examples:
        key = normalize_key(ex.text)
        if key in seen:
            if multi_label:
                first = seen[key]
                merged = tuple(dict.fromkeys(first.labels + ex.labels))
                seen[key] = Example(first.text, merged, first.where)
            continue
        seen[key] = ex
    return list(seen.values())


def subsample(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A seeded random subset (order kept) when ``max_examples`` is set and smaller than the data."""
    if not max_examples or len(examples) <= max_examples:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def split_examples(
    examples: list[Example], *, val_fraction: float, test_fraction: float, seed: int, stratify: bool
) -> dict[str, list[Example]]:
    """Seeded train/val/test split of deduplicated examples (stratified on the label if asked and possible)."""
    n = len(examples)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(f"only {n} distinct examples: too few to split into train/validation/test")
    idx = list(range(n))
    strat = [ex.labels[0] for ex in examples] if stratify else None

    def _split(ids, size, labels):
        try:
            return train_test_split(ids, test_size=size, random_state=seed, stratify=labels)
        except ValueError:  # a class too small to stratify: fall back to a plain seeded split
            return train_test_split(ids, test_size=size, random_state=seed)

    rest, test = _split(idx, n_test, strat)
    rest_strat = [strat[i] for i in rest] if strat else None
    train, val = _split(rest, n_val, rest_strat)
    out = {"train": [examples[i] for i in train], "val": [examples[i] for i in val], "test": [examples[i] for i in test]}
    assert_no_leakage(out)
    return out


def assert_no_leakage(splits: dict[str, list[Example]]) -> None:
    """DataError if a normalized text appears in two splits."""
    owner: dict[str, str] = {}
    for name, exs in splits.items():
        for ex in exs:
            key = normalize_key(ex.text)
            if owner.setdefault(key, name) != name:
                raise DataError(f"{ex.where}: text appears in both {owner[key]} and {name} splits")


def fingerprint(splits: dict[str, list[Example]]) -> str:
    """sha256 over every prepared example (split, text, labels), in split order."""
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        for ex in splits[name]:
            h.update(f"{name}\t{ex.text}\t{LABEL_SEPARATOR.join(ex.labels)}\n".encode("utf-8"))
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
