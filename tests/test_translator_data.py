"""Translation data: cleaning rules, pair filters, Ding parsing, dedup, leak-free seeded splits."""

from __future__ import annotations

import pytest

from training.data.translation import (
    Pair,
    TranslationSplits,
    check_no_leakage,
    clean_ui_string,
    dedupe,
    is_sentence,
    is_translation,
    load_splits,
    parse_ding_line,
    read_pairs_file,
    source_key,
)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("_Open File", "Open File"),  # gettext hotkey marker
        ("~Save As...", "Save As..."),  # LibreOffice hotkey marker
        ("열기(_O)", "열기"),  # bracketed accelerator after Korean text
        ("페이지 크기에 맞춤(~P)", "페이지 크기에 맞춤"),
        ("<b>Bold</b> text &amp; more", "Bold text & more"),  # markup and entities
        ("First line.\nSecond line.", "First line. Second line."),  # line breaks
        ("About %PRODUCTNAME", "About LibreOffice"),
        ("  spaced   out\t", "spaced out"),
        ("<All Files>", "<All Files>"),  # literal angle brackets are text, not markup
        ("snake_case stays when not a hotkey _", "snakecase stays when not a hotkey _"),
    ],
)
def test_clean_ui_string(raw, clean):
    assert clean_ui_string(raw) == clean


@pytest.mark.parametrize("raw", ["Group %1", "Test XML Filter: %s", "Access to $(ARG1) was denied.",
                                 "%PRODUCTNAME %PRODUCTVERSION", "install $NEW version", "Value {0}"])
def test_placeholders_drop_the_string(raw):
    assert clean_ui_string(raw) is None


@pytest.mark.parametrize(
    "src, tgt, lang, keep",
    [
        ("Open the file.", "파일을 엽니다.", "ko", True),
        ("BIN2OCT", "BIN2OCT", "ko", False),  # untranslated copy
        ("Tibetan", "Tibetan", "de", False),
        ("Save", "Save", "ko", False),
        ("Open the document", "Open the document 열기", "ko", True),
        ("Open the document", "Dokument öffnen", "ko", False),  # a Korean target needs Hangul
        ("123", "123 개", "ko", False),  # no letters in the source
        ("", "x", "de", False),
        ("A fairly long source sentence here.", "Kurz", "de", False),  # lengths differ more than 5x
        ("OK", "확인", "ko", True),  # short strings skip the length-ratio rule
        ("Gut", "Good", "en", True),
    ],
)
def test_is_translation(src, tgt, lang, keep):
    assert is_translation(src, tgt, lang) is keep


def test_is_sentence():
    assert is_sentence("Das ist ein Satz.")
    assert is_sentence("Is this a question?")
    assert not is_sentence("to litter")  # phrase, not sentence
    assert not is_sentence("Ein Satz ohne Ende")
    assert not is_sentence("kleiner Anfang hier.")  # lower-case start


def test_parse_ding_line_keeps_aligned_sentences_only():
    line = (
        "Abfall verstreuen {vt} | Abfall verstreuend | Schmutzige Wäsche lag über den Boden verstreut. | "
        "Bitte halten Sie den Rasen sauber! :: to litter | littering | Dirty clothes littered the floor. | "
        "Please keep the lawn clean [Br.]!\n"
    )
    assert parse_ding_line(line) == [
        ("Schmutzige Wäsche lag über den Boden verstreut.", "Dirty clothes littered the floor."),
        ("Bitte halten Sie den Rasen sauber!", "Please keep the lawn clean!"),
    ]
    assert parse_ding_line("# comment :: line") == []
    assert parse_ding_line("a | b :: c\n") == []  # misaligned sub-entries are skipped


def test_dedupe_keeps_most_frequent_translation_per_source():
    pairs = [Pair("Open", "열기", "x"), Pair("open", "열기", "x"), Pair("Open", "열림", "x"), Pair("Close", "닫기", "x")]
    out = {source_key(p.src): p.tgt for p in dedupe(pairs)}
    assert out == {"open": "열기", "close": "닫기"}


def _pairs(n: int) -> list[Pair]:
    return [Pair(f"Quelle Nummer {i}.", f"Source number {i}.", "t") for i in range(n)]


def test_splits_have_no_source_in_two_splits_and_are_seeded():
    pairs = _pairs(300) + [Pair("QUELLE nummer 5.", "Another translation.", "t")]  # same source key as #5
    a = load_splits("de-en", pairs=dedupe(pairs), seed=1, val_size=30, test_size=40)
    b = load_splits("de-en", pairs=dedupe(pairs), seed=1, val_size=30, test_size=40)
    c = load_splits("de-en", pairs=dedupe(pairs), seed=2, val_size=30, test_size=40)
    assert a.sizes() == {"train": 230, "val": 30, "test": 40}
    keys = [{source_key(p.src) for p in getattr(a, s)} for s in ("train", "val", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.fingerprint != c.fingerprint


def test_leakage_check_fails_on_leaked_source():
    leaked = TranslationSplits(
        name="de-en", source_lang="de", target_lang="en", seed=0, sources=("t",),
        train=[Pair("Ein Satz.", "A sentence.", "t")], val=[], test=[Pair("ein  SATZ.", "One sentence.", "t")],
    )
    with pytest.raises(ValueError, match="both train and test"):
        check_no_leakage(leaked)


def test_read_pairs_file_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Hallo Welt.\tHello world.\n\nGuten Tag.\tGood day.\n", encoding="utf-8")
    assert [(p.src, p.tgt) for p in read_pairs_file(tsv)] == [("Hallo Welt.", "Hello world."), ("Guten Tag.", "Good day.")]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"source": "a b", "target": "c d"}\n{"source": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        read_pairs_file(jl)
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one column\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:1: expected 2"):
        read_pairs_file(bad)
