"""Sample and evaluation files for an imported model, per task. Errors name file and line.

Sample (unlabelled; labels, if present, are ignored):
- text: ``.txt`` (one text per line), ``.csv``/``.tsv`` (a ``text`` column) or ``.jsonl`` (``{"text": ...}``);
- translation: ``.txt`` (one source per line), ``.tsv`` (source TAB target) or ``.jsonl`` (``{"source": ...}``);
- image: a folder of ``.png``/``.jpg``/``.jpeg`` files (searched recursively).

Evaluation (labelled): text CSV/TSV/JSONL as ``train --data`` reads it; images ``root/<label>/*.png``;
translation TSV/JSONL pairs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .family import DataError
from .import_spec import ImportRejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _text_file(path: Path, what: str) -> str:
    if not path.is_file():
        raise ImportRejected(f"{what}: file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ImportRejected(f"{what}: {path} is not UTF-8 ({exc})") from None


def _images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ImportRejected(f"{what}: {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImportRejected(f"{what}: no .png/.jpg/.jpeg files under {folder}")
    return files


def read_sample(task: str, path: Path) -> tuple[list[str], list]:
    """(where each item comes from, items as the runtime takes them: strings or image file bytes)."""
    if task == "image-classification":
        files = _images(path, "sample")
        return [str(f) for f in files], [f.read_bytes() for f in files]
    text = _text_file(path, "sample")
    suffix = path.suffix.lower()
    if task == "translation" and suffix == ".csv":
        raise ImportRejected(f"sample: {path}: translation samples are .txt (one source per line), .tsv or .jsonl")
    items = []
    if suffix in (".csv", ".tsv") and task != "translation":
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if "text" not in (reader.fieldnames or []):
            raise ImportRejected(f"sample: {path}:1: header must name a 'text' column (got {reader.fieldnames})")
        items = [(f"{path}:{reader.line_num}", row["text"]) for row in reader]
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            if suffix in (".jsonl", ".ndjson"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ImportRejected(f"sample: {where}: invalid JSON ({exc.msg})") from None
                key = "source" if task == "translation" and isinstance(row, dict) and "source" in row else "text"
                if not isinstance(row, dict) or key not in row:
                    raise ImportRejected(f"sample: {where}: expected an object with {key!r}")
                items.append((where, row[key]))
            elif suffix == ".tsv":
                items.append((where, line.split("\t")[0]))
            else:
                items.append((where, line))
    for where, value in items:
        if not isinstance(value, str) or not value.strip():
            raise ImportRejected(f"sample: {where}: empty or non-string text")
    return [where for where, _ in items], [value.strip() for _, value in items]


def read_eval(task: str, path: Path, labels: list[str]) -> tuple[list, list]:
    """(inputs, targets): targets are label tuples (classifiers) or reference translations."""
    if task == "image-classification":
        if not path.is_dir():
            raise ImportRejected(f"eval: {path} is not a folder (expected {path}/<label>/*.png)")
        items, targets = [], []
        for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in labels:
                raise ImportRejected(f"eval: {folder}: unknown label {folder.name!r}; labels: {', '.join(labels)}")
            for f in _images(folder, "eval"):
                items.append(f.read_bytes())
                targets.append((folder.name,))
        if not items:
            raise ImportRejected(f"eval: no label folders with images under {path}")
        return items, targets
    if task == "translation":
        from .data.translation import read_pairs_file

        try:
            pairs = read_pairs_file(path)
        except (OSError, ValueError) as exc:
            raise ImportRejected(f"eval: {exc}") from None
        return [p.src for p in pairs], [p.tgt for p in pairs]
    from .data.common import check_labels, read_labelled_file

    try:
        examples = read_labelled_file(path, multi_label=task == "multi-label-classification")
        check_labels(examples, labels)
    except DataError as exc:
        raise ImportRejected(f"eval: {exc}") from None
    return [e.text for e in examples], [e.labels for e in examples]
