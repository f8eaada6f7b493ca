"""Parallel corpora for the translator family: Ding de-en sentences and LibreOffice UI catalogues.

Sources (see ENVIRONMENT.md):
- ``ding``: Debian ``trans-de-en`` (/usr/share/trans/de-en), lines ``de | de :: en | en``; GPL-2+.
- ``lo-de`` / ``lo-ko``: LibreOffice 7.4 gettext catalogues from the Debian packages
  ``libreoffice-l10n-de`` / ``-ko`` (msgid English, msgstr German/Korean); MPL-2.0.

Every pair is cleaned, filtered, deduplicated to one translation per normalised source,
then split by source into seeded train/val/test so that no source sentence is in two
splits. Prepared pairs are cached as JSONL under ``data/translation/``.
"""

from __future__ import annotations

import gettext
import hashlib
import html
import json
import random
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DING_PATH = Path("/usr/share/trans/de-en")
LO_PACKAGES = {"de": "libreoffice-l10n-de", "ko": "libreoffice-l10n-ko"}
LICENCES = {"ding": "GPL-2.0-or-later", "lo-de": "MPL-2.0", "lo-ko": "MPL-2.0"}

# Which sources make up each model's corpus, and their direction.
CORPORA: dict[str, dict] = {
    "de-en": {"source_lang": "de", "target_lang": "en", "sources": ("ding", "lo-de")},
    "en-ko": {"source_lang": "en", "target_lang": "ko", "sources": ("lo-ko",)},
}

MAX_CHARS = 300
CLEANING_VERSION = 2  # bump when a cleaning or filter rule changes: cached pairs are rebuilt


@dataclass(frozen=True)
class Pair:
    """One sentence pair, with the corpus it came from."""

    src: str
    tgt: str
    origin: str


@dataclass
class TranslationSplits:
    """Train/val/test pairs of one language pair plus their provenance."""

    name: str
    source_lang: str
    target_lang: str
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    seed: int
    sources: tuple[str, ...]
    fingerprint: str = ""
    stats: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    @property
    def licence(self) -> str | None:
        known = {LICENCES[s] for s in self.sources if s in LICENCES}
        return " + ".join(sorted(known)) if known else None

    @property
    def source_description(self) -> str:
        names = {"ding": "Debian trans-de-en (Ding dictionary example sentences)",
                 "lo-de": "LibreOffice 7.4 German UI catalogues (libreoffice-l10n-de)",
                 "lo-ko": "LibreOffice 7.4 Korean UI catalogues (libreoffice-l10n-ko)"}
        return "; ".join(names.get(s, f"user file {s}") for s in self.sources)


# ---------------------------------------------------------------- cleaning rules

_WS = re.compile(r"\s+")
_DING_ANNOT = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\])")
_SENTENCE_END = re.compile(r"[.!?][\"'»«“”’)]*$")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_LETTER = re.compile(r"[^\W\d_]")
# Korean (and some German) catalogues put the hotkey in brackets after the text: "열기(_O)", "(~P)"
_BRACKET_ACCEL = re.compile(r"\s*\([_~][^\s()]\)")
_TAG = re.compile(r"</?[a-z][a-z0-9_]*(\s[^<>]*)?/?>")
_PRODUCT = re.compile(r"%PRODUCTNAME\b")
# placeholders left after %PRODUCTNAME is replaced: such pairs are dropped, not guessed at
_PLACEHOLDER = re.compile(r"%[A-Za-z0-9]+|\$\([A-Za-z0-9_]+\)|\$[A-Z0-9]+\b|\{[A-Za-z0-9_]*\}|%\d|\$\d|#\d\b")


def normalise_space(text: str) -> str:
    return _WS.sub(" ", text).strip()


def clean_ui_string(text: str) -> str | None:
    """Clean one gettext UI string; None when a format placeholder remains.

    Replaces %PRODUCTNAME by LibreOffice, removes markup tags (HTML entities
    unescaped), bracketed accelerators ``(_O)``/``(~P)``, ``~`` and ``_`` hotkey markers
    and line breaks.
    """
    text = _PRODUCT.sub("LibreOffice", text)
    if _PLACEHOLDER.search(text):
        return None
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _BRACKET_ACCEL.sub("", text)
    text = text.replace("~", "")
    # "_" marks the hotkey letter ("_Open"); a lone "_" between spaces is kept as text
    text = re.sub(r"_(?=\w)", "", text)
    text = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return normalise_space(text)


def is_translation(src: str, tgt: str, target_lang: str) -> bool:
    """Keep pairs that look like a real translation of running text.

    Drops empty strings, strings without letters, untranslated copies, Korean targets
    without Hangul, and (unless both are short) pairs whose character lengths differ by more than 5x.
    """
    if not src or not tgt or len(src) > MAX_CHARS or len(tgt) > MAX_CHARS:
        return False
    if not _LETTER.search(src) or not _LETTER.search(tgt):
        return False
    if src.casefold() == tgt.casefold():
        return False
    if target_lang == "ko" and not _HANGUL.search(tgt):
        return False
    ratio = len(tgt) / len(src)
    return 0.2 <= ratio <= 5.0 if max(len(src), len(tgt)) > 12 else True


def is_sentence(text: str, min_words: int = 4) -> bool:
    """A dictionary example sentence: capital (or quote/digit) start, . ! ? end, enough words."""
    if len(text.split()) < min_words or not _SENTENCE_END.search(text):
        return False
    first = text.lstrip("\"'„“»(¡¿")[:1]
    return bool(first) and (first.isupper() or first.isdigit())


def clean_ding_text(text: str) -> str:
    """Drop Ding's {gender}/[domain] annotations and normalise whitespace."""
    return normalise_space(_DING_ANNOT.sub("", text))


def parse_ding_line(line: str) -> list[tuple[str, str]]:
    """Sentence pairs from one Ding line ``de | de :: en | en`` (aligned by ``|`` and ``;``)."""
    return [(d, e) for d, e in _ding_alternatives(line) if is_sentence(d) and is_sentence(e)]


_PAREN = re.compile(r"\s*\([^()]*\)")
# dictionary notation that never occurs in running text: jdm./etw./sb./sth., ellipses, slashes
_DICT_NOTATION = re.compile(r"\b(jd[mnrs]?|etw|sb|sth|so)\.|…|/|\.\.\.")


def parse_ding_phrases(line: str, max_chars: int = 60) -> list[tuple[str, str]]:
    """Word and phrase pairs of one Ding line (extra training data; never held out).

    Alternatives that are not sentences on both sides, with annotations and parenthesised
    remarks removed; entries written in dictionary notation (jdm./sth., slashes) are skipped.
    """
    out = []
    for d, e in _ding_alternatives(line):
        if is_sentence(d) and is_sentence(e):
            continue
        d, e = normalise_space(_PAREN.sub("", d)), normalise_space(_PAREN.sub("", e))
        if not d or not e or len(d) > max_chars or len(e) > max_chars:
            continue
        if _DICT_NOTATION.search(d) or _DICT_NOTATION.search(e) or not _LETTER.search(d) or not _LETTER.search(e):
            continue
        out.append((d, e))
    return out


def _ding_alternatives(line: str) -> list[tuple[str, str]]:
    """Aligned (de, en) alternatives of one Ding line, annotations removed."""
    if line.startswith("#") or " :: " not in line:
        return []
    de_side, en_side = line.rstrip("\n").split(" :: ", 1)
    de_parts, en_parts = de_side.split(" | "), en_side.split(" | ")
    if len(de_parts) != len(en_parts):
        return []
    pairs = []
    for de, en in zip(de_parts, en_parts):
        de_alts, en_alts = de.split("; "), en.split("; ")
        if len(de_alts) != len(en_alts):  # alternatives not aligned: keep only the first of each
            de_alts, en_alts = de_alts[:1], en_alts[:1]
        pairs.extend((clean_ding_text(d), clean_ding_text(e)) for d, e in zip(de_alts, en_alts))
    return pairs


# ---------------------------------------------------------------- readers


def _ding_pairs(path: Path, parse, origin: str) -> list[Pair]:
    """Every (German, English) pair that ``parse`` finds in the lines of the Ding dictionary."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: apt-get install trans-de-en")
    with open(path, encoding="utf-8") as f:
        return [Pair(d, e, origin) for line in f for d, e in parse(line)]


def read_ding(path: Path = DING_PATH) -> list[Pair]:
    """German-English sentence pairs of the Ding dictionary."""
    return _ding_pairs(path, parse_ding_line, "ding")


def read_ding_phrases(path: Path = DING_PATH) -> list[Pair]:
    """German-English word and phrase pairs of the Ding dictionary, deduplicated by source."""
    return sorted(dedupe(_ding_pairs(path, parse_ding_phrases, "ding-phrase")), key=lambda p: (p.src, p.tgt))


_WORD = re.compile(r"[^\W_]+")


def add_phrases(train: list[Pair], held_out: list[Pair], phrases: list[Pair], n: int, seed: int) -> list[Pair]:
    """``train`` plus up to ``n`` seeded phrase pairs whose source is in no split yet.

    Only phrases whose every source word occurs at least twice in the training sentences are
    candidates: the dictionary is mostly rare terms, and the point is the corpus's own vocabulary.
    """
    taken = {source_key(p.src) for p in train} | {source_key(p.src) for p in held_out}
    counts = Counter(w for p in train for w in _WORD.findall(p.src.casefold()))
    fresh = [p for p in phrases if source_key(p.src) not in taken
             and all(counts[w] >= 2 for w in _WORD.findall(p.src.casefold()))]
    random.Random(seed + 2).shuffle(fresh)
    out = train + fresh[:n]
    random.Random(seed + 3).shuffle(out)
    return out


def extract_catalogues(lang: str, cache_dir: Path) -> Path:
    """Download and unpack LibreOffice's ``lang`` catalogues once; returns the unpacked folder."""
    root = cache_dir / f"libreoffice-l10n-{lang}"
    if any(root.rglob("*.mo")):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess.run(["apt-get", "download", LO_PACKAGES[lang]], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    if not any(root.rglob("*.mo")):
        raise FileNotFoundError(f"no .mo catalogues in {LO_PACKAGES[lang]}")
    return root


def read_mo_pairs(mo_file: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of one .mo catalogue; context prefixes removed, plural forms skipped."""
    with open(mo_file, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # the parsed msgid -> msgstr table
    return [(k.split("\x04", 1)[-1], v) for k, v in catalog.items() if isinstance(k, str) and k and v]


def read_libreoffice(lang: str, cache_dir: Path) -> list[Pair]:
    """English-``lang`` UI string pairs (English source), cleaned and filtered."""
    root = extract_catalogues(lang, cache_dir)
    pairs = []
    for mo in sorted(root.rglob("*.mo")):
        for msgid, msgstr in read_mo_pairs(mo):
            en, other = clean_ui_string(msgid), clean_ui_string(msgstr)
            if en is None or other is None:
                continue
            pairs.append(Pair(en, other, f"lo-{lang}"))
    return pairs


HELP_PACKAGES = {"en": "libreoffice-help-en-us", "de": "libreoffice-help-de", "ko": "libreoffice-help-ko"}
HELP_FOLDERS = {"en": "en-US", "de": "de", "ko": "ko"}
# help pages are generated from the same sources in every language: elements carry the same ids
_HELP_ELEMENT = re.compile(r'<(p|h[1-6]|td)\s+id="([^"]+)"[^>]*>(.*?)</\1>', re.S)
_ANY_TAG = re.compile(r"<[^>]+>")


def extract_help(lang: str, cache_dir: Path) -> Path:
    """Download and unpack LibreOffice's ``lang`` help pages once; returns the language's HTML folder."""
    root = cache_dir / HELP_PACKAGES[lang]
    folder = root / "usr/share/libreoffice/help" / HELP_FOLDERS[lang]
    if any(folder.rglob("*.html")):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess.run(["apt-get", "download", HELP_PACKAGES[lang]], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        subprocess.run(["dpkg-deb", "-x", str(next(Path(tmp).glob("*.deb"))), str(root)], check=True)
    if not any(folder.rglob("*.html")):
        raise FileNotFoundError(f"no help pages in {HELP_PACKAGES[lang]}")
    return folder


def _help_elements(path: Path) -> dict[str, str]:
    """Element id -> its text (markup removed) of one help page."""
    out = {}
    for _, element_id, body in _HELP_ELEMENT.findall(path.read_text(encoding="utf-8", errors="replace")):
        text = normalise_space(html.unescape(_ANY_TAG.sub(" ", body)))
        if text:
            out[element_id] = text
    return out


def read_libreoffice_help(lang: str, cache_dir: Path) -> list[Pair]:
    """English-``lang`` pairs of the LibreOffice help: the same element of the same page in both languages."""
    english, other = extract_help("en", cache_dir), extract_help(lang, cache_dir)
    pairs = []
    for page in sorted(english.rglob("*.html")):
        twin = other / page.relative_to(english)
        if not twin.is_file():
            continue
        theirs = _help_elements(twin)
        for element_id, en in _help_elements(page).items():
            if element_id in theirs:
                pairs.append(Pair(en, theirs[element_id], f"lo-help-{lang}"))
    return pairs


def read_pairs_file(path: Path) -> list[Pair]:
    """User pairs: TSV (source<TAB>target) or JSONL ({"source": ..., "target": ...}).

    Raises ValueError naming the file and line of a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                    src, tgt = row["source"], row["target"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: expected {{\"source\": ..., \"target\": ...}} ({exc})") from None
            else:
                cols = line.rstrip("\n").split("\t")
                if len(cols) != 2:
                    raise ValueError(f"{path}:{n}: expected 2 tab-separated columns, got {len(cols)}")
                src, tgt = cols
            if not isinstance(src, str) or not isinstance(tgt, str) or not src.strip() or not tgt.strip():
                raise ValueError(f"{path}:{n}: empty source or target")
            pairs.append(Pair(normalise_space(src), normalise_space(tgt), path.name))
    return dedupe(pairs)


# ---------------------------------------------------------------- corpus assembly


def source_key(text: str) -> str:
    """What counts as "the same source sentence" for dedup and leakage checks."""
    return normalise_space(text).casefold()


def dedupe(pairs: list[Pair]) -> list[Pair]:
    """One pair per source key: its most frequent translation (ties: first seen)."""
    by_source: dict[str, Counter] = {}
    first: dict[tuple[str, str], Pair] = {}
    for p in pairs:
        by_source.setdefault(source_key(p.src), Counter())[p.tgt] += 1
        first.setdefault((source_key(p.src), p.tgt), p)
    out = []
    for key, counts in by_source.items():
        tgt = counts.most_common(1)[0][0]
        out.append(first[(key, tgt)])
    return out


def collect_pairs(name: str, cache_dir: Path) -> list[Pair]:
    """All cleaned, filtered, deduplicated pairs of one model's corpus (cached as JSONL)."""
    spec = CORPORA[name]
    cache_file = cache_dir / f"{name}.pairs.v{CLEANING_VERSION}.jsonl"
    if cache_file.is_file():
        with open(cache_file, encoding="utf-8") as f:
            return [Pair(**json.loads(line)) for line in f]
    raw: list[Pair] = []
    for source in spec["sources"]:
        if source == "ding":
            raw.extend(read_ding())
        else:
            lang = source.split("-", 1)[1]
            ui = read_libreoffice(lang, cache_dir)
            if spec["source_lang"] != "en":  # catalogues are English -> lang; flip for de-en
                ui = [Pair(p.tgt, p.src, p.origin) for p in ui]
            raw.extend(ui)
    kept = [p for p in raw if is_translation(p.src, p.tgt, spec["target_lang"])]
    pairs = sorted(dedupe(kept), key=lambda p: (p.origin, p.src, p.tgt))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.__dict__, ensure_ascii=False) + "\n")
    tmp.rename(cache_file)
    return pairs


def split_pairs(pairs: list[Pair], *, seed: int, val_size: int, test_size: int) -> tuple[list, list, list]:
    """Seeded split by source key: every source sentence lands in exactly one split."""
    keys = sorted({source_key(p.src) for p in pairs})
    random.Random(seed).shuffle(keys)
    if val_size + test_size >= len(keys):
        raise ValueError(f"{len(keys)} sources cannot give val {val_size} + test {test_size} and a train split")
    test_keys, val_keys = set(keys[:test_size]), set(keys[test_size:test_size + val_size])
    train, val, test = [], [], []
    for p in pairs:
        k = source_key(p.src)
        (test if k in test_keys else val if k in val_keys else train).append(p)
    random.Random(seed + 1).shuffle(train)  # so a capped train split mixes every origin
    return train, val, test


def fingerprint(splits: TranslationSplits) -> str:
    """sha256 over every split's pairs in order (changes when data, cleaning or seed change)."""
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for p in getattr(splits, split):
            h.update(f"{split}\t{p.origin}\t{p.src}\t{p.tgt}\n".encode())
    return h.hexdigest()


def check_no_leakage(splits: TranslationSplits) -> None:
    """Raise if any source sentence appears in two splits."""
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for p in getattr(splits, split):
            k = source_key(p.src)
            if seen.setdefault(k, split) != split:
                raise ValueError(f"source {p.src!r} is in both {seen[k]} and {split}")


def load_splits(
    name: str,
    *,
    cache_dir: Path = Path("data/translation"),
    seed: int = 13,
    val_size: int = 500,
    test_size: int = 1000,
    max_train: int | None = None,
    pairs: list[Pair] | None = None,
    phrase_pairs: int = 0,
    help_pairs: bool = False,
) -> TranslationSplits:
    """Prepared, leakage-checked, fingerprinted splits of ``name`` (``de-en`` or ``en-ko``).

    ``pairs`` replaces the built-in corpus (a user's file, see :func:`read_pairs_file`);
    ``max_train`` caps the training split (smoke preset); ``phrase_pairs`` adds up to that many
    Ding word/phrase pairs to the training split only (corpora with the ``ding`` source), so the
    held-out splits stay sentences; ``help_pairs`` adds the LibreOffice help pages' pairs (corpora
    with a LibreOffice source) to the training split only, so the held-out splits stay UI strings.
    """
    if name not in CORPORA:
        raise KeyError(f"unknown translation corpus {name!r}; have {sorted(CORPORA)}")
    spec = CORPORA[name]
    all_pairs = pairs if pairs is not None else collect_pairs(name, cache_dir)
    train, val, test = split_pairs(all_pairs, seed=seed, val_size=val_size, test_size=test_size)
    if max_train is not None:
        train = train[:max_train]
    n_phrases = 0
    if phrase_pairs and pairs is None and "ding" in spec["sources"]:
        before = len(train)
        train = add_phrases(train, val + test, read_ding_phrases(), phrase_pairs, seed)
        n_phrases = len(train) - before
    n_help = 0
    if help_pairs and pairs is None:
        before = len(train)
        train = add_help_pairs(train, val + test, collect_help_pairs(name, cache_dir), seed)
        n_help = len(train) - before
    splits = TranslationSplits(
        name=name, source_lang=spec["source_lang"], target_lang=spec["target_lang"],
        train=train, val=val, test=test, seed=seed,
        sources=tuple(spec["sources"]) if pairs is None else tuple(sorted({p.origin for p in all_pairs})),
    )
    check_no_leakage(splits)
    splits.fingerprint = fingerprint(splits)
    splits.stats = {"pairs": len(all_pairs), "by_origin": dict(Counter(p.origin for p in all_pairs))}
    if n_phrases:
        splits.stats["phrase_pairs"] = n_phrases
    if n_help:
        splits.stats["help_pairs"] = n_help
    return splits


def collect_help_pairs(name: str, cache_dir: Path) -> list[Pair]:
    """The cleaned, filtered, deduplicated help pairs of one model's language pair (cached as JSONL)."""
    spec = CORPORA[name]
    lang = spec["target_lang"] if spec["source_lang"] == "en" else spec["source_lang"]
    cache_file = cache_dir / f"{name}.help.v{CLEANING_VERSION}.jsonl"
    if cache_file.is_file():
        with open(cache_file, encoding="utf-8") as f:
            return [Pair(**json.loads(line)) for line in f]
    raw = read_libreoffice_help(lang, cache_dir)
    if spec["source_lang"] != "en":
        raw = [Pair(p.tgt, p.src, p.origin) for p in raw]
    pairs = sorted(dedupe([p for p in raw if is_translation(p.src, p.tgt, spec["target_lang"])]),
                   key=lambda p: (p.src, p.tgt))
    tmp = cache_file.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.__dict__, ensure_ascii=False) + "\n")
    tmp.rename(cache_file)
    return pairs


def add_help_pairs(train: list[Pair], held_out: list[Pair], help_pairs: list[Pair], seed: int) -> list[Pair]:
    """``train`` plus every help pair whose source is in no split yet (shuffled with them)."""
    taken = {source_key(p.src) for p in train} | {source_key(p.src) for p in held_out}
    out = train + [p for p in help_pairs if source_key(p.src) not in taken]
    random.Random(seed + 4).shuffle(out)
    return out
