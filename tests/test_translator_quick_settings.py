"""Settings the translators' quick preset relies on: Ding phrase pairs as training-only data,
the training time budget, and running the two translators side by side (`train --jobs auto`)."""

from __future__ import annotations

import math
import time

import pytest

from training.data.translation import Pair, add_phrases, load_splits, parse_ding_phrases, source_key

LINE = (
    "Abfall verstreuen {vt} | Abfall verstreuend | Schmutzige Wäsche lag über den Boden verstreut. | "
    "jdm. etw. geben | Haus {n} (Gebäude) :: to litter | littering | Dirty clothes littered the floor. | "
    "to give sb. sth. | house (building)\n"
)


def test_phrases_are_the_non_sentence_alternatives_without_notation():
    assert parse_ding_phrases(LINE) == [
        ("Abfall verstreuen", "to litter"), ("Abfall verstreuend", "littering"), ("Haus", "house"),
    ]


def test_phrases_join_train_only_and_never_a_held_out_source():
    train = [Pair("Das Haus ist rot.", "The house is red.", "ding"), Pair("Das Haus ist alt.", "The house is old.", "ding")]
    held_out = [Pair("Das Haus", "The house", "ding")]
    phrases = [Pair("das Haus", "the house", "ding-phrase"),  # a held-out source (case-folded)
               Pair("Haus", "house", "ding-phrase"),
               Pair("Zinnfolie", "tin foil", "ding-phrase")]  # a word the sentences never use
    out = add_phrases(train, held_out, phrases, n=10, seed=1)
    assert sorted(p.src for p in out if p.origin == "ding-phrase") == ["Haus"]
    assert len(add_phrases(train, held_out, phrases, n=0, seed=1)) == 2


def test_load_splits_adds_no_phrases_to_user_pairs():
    pairs = [Pair(f"Quelle Nummer {i}.", f"Source number {i}.", "t") for i in range(100)]
    s = load_splits("de-en", pairs=pairs, seed=1, val_size=10, test_size=10, phrase_pairs=1000)
    assert s.sizes()["train"] == 80 and "phrase_pairs" not in s.stats
    assert not {source_key(p.src) for p in s.train} & {source_key(p.src) for p in s.test}


def test_budget_schedule_anneals_by_steps_or_by_time():
    from training.trainer import budget_schedule

    now = time.perf_counter()
    by_steps = budget_schedule("linear", warmup=10, total=110, budget_s=1e9, t_start=now)
    assert by_steps(0) == 0 and by_steps(5) == 0.5 and by_steps(10) == 1.0
    assert by_steps(60) == pytest.approx(0.5) and by_steps(110) == pytest.approx(0.0)
    cosine = budget_schedule("cosine", warmup=0, total=100, budget_s=1e9, t_start=now)
    assert cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0, abs=1e-9)
    # half the time budget already spent at step 20 of 1000: time progress wins
    by_time = budget_schedule("linear", warmup=0, total=1000, budget_s=10.0, t_start=now - 5.0)
    assert by_time(20) == pytest.approx(0.5, abs=0.01)
    late = budget_schedule("cosine", warmup=0, total=1000, budget_s=1.0, t_start=now - 5.0)
    assert late(1) == pytest.approx(0.0, abs=1e-9) and not math.isnan(late(1))


def test_quick_gate_needs_chrf_above_retrieval_and_en_ko_keeps_its_best_validation_chrf():
    """The quick gate fails a translator under the retrieval baseline (en-ko's 37.2 against 37.5, measured
    when validation loss kept an early epoch) and passes one above it; en-ko selects by validation chrF."""
    from training.cli import resolve_configs
    from training.gate import evaluate_gate

    cfgs = resolve_configs(["de-en", "en-ko"], "quick")
    assert cfgs["en-ko"].train.monitor == "chrf" and cfgs["de-en"].train.monitor == "neg_loss"
    baselines = {"retrieval": {"chrf": 37.5, "bleu": 41.0}, "copy_source": {"chrf": 4.1, "bleu": 2.4}}
    parity = {"torch_match_greedy_b1": 1.0, "torch_match_greedy_b16": 1.0, "torch_match_beam_b16": 1.0,
              "torch_match_continuous_greedy": 1.0, "torch_match_continuous_beam": 1.0}
    criteria = cfgs["en-ko"].gate.criteria
    assert not evaluate_gate("en-ko", criteria, {"chrf": 37.2, "bleu": 45.0, **parity}, baselines).passed
    assert evaluate_gate("en-ko", criteria, {"chrf": 43.6, "bleu": 48.9, **parity}, baselines).passed
    low_copy = {"retrieval": {"chrf": 5.0, "bleu": 1.0}, "copy_source": {"chrf": 18.3, "bleu": 1.6}}
    assert not evaluate_gate("de-en", cfgs["de-en"].gate.criteria, {"chrf": 20.0, "bleu": 5.0, **parity},
                             low_copy).passed  # above retrieval, under copy-source + 5


def test_jobs_auto_runs_only_concurrent_families_in_parallel(monkeypatch):
    from training.cli import ConfigError, parallel_jobs, resolve_configs
    from training.families import available_models

    families = available_models()
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    both = resolve_configs(["de-en", "en-ko"], "quick")
    assert parallel_jobs("auto", both, families) == 2  # the quick preset pins train.threads=1
    two_threads = resolve_configs(["de-en", "en-ko"], "quick", sets=["train.threads=2"])
    assert parallel_jobs("auto", two_threads, families) == 1
    mixed = resolve_configs(["sentiment", "de-en"], "quick")
    assert parallel_jobs("auto", mixed, families) == 1  # classifiers keep training one after another
    assert parallel_jobs("auto", resolve_configs(["de-en"], "quick"), families) == 1
    assert parallel_jobs("2", mixed, families) == 2
    with pytest.raises(ConfigError, match="--jobs"):
        parallel_jobs("zero", mixed, families)


def test_two_translators_train_in_parallel_processes(tmp_path, capsys):
    """`train --jobs 2` publishes both models from their own processes and reports both."""
    from modelkit.registry import latest_version, load_version
    from test_translator_decoding import synthetic_pairs
    from training.cli import main

    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in synthetic_pairs(200, seed=2)), encoding="utf-8")
    root = tmp_path / "registry"
    rc = main(["train", "--preset", "smoke", "--models", "de-en,en-ko", "--jobs", "2",
               "--data", f"de-en={data}", "--data", f"en-ko={data}", "--registry", str(root),
               "--data-dir", str(tmp_path / "data"), "--set", "train.progress=false", "--set", "train.threads=1",
               "--set", "train.max_minutes=0.5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "in 2 parallel processes" in out and "=== 2 model(s)" in out
    for name, lang in (("de-en", "en"), ("en-ko", "ko")):
        manifest, _ = load_version(root, name, latest_version(root, name))
        assert manifest.preprocessing.target_lang == lang and manifest.gate.passed
        assert manifest.training.config["train"]["max_minutes"] == 0.5


def test_a_model_that_fails_in_its_process_does_not_hide_the_others(tmp_path, capsys):
    """`train --jobs 2`: one model's error (bad data in its worker) still lets the other finish, be
    published and reported; the exit code is the error's."""
    from modelkit.registry import latest_version
    from test_translator_decoding import synthetic_pairs
    from training.cli import EXIT_INPUT, main

    good, bad = tmp_path / "pairs.tsv", tmp_path / "bad.tsv"
    good.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in synthetic_pairs(200, seed=2)), encoding="utf-8")
    bad.write_text("a line without its translation\n" * 50, encoding="utf-8")
    root = tmp_path / "registry"
    rc = main(["train", "--preset", "smoke", "--models", "de-en,en-ko", "--jobs", "2",
               "--data", f"de-en={good}", "--data", f"en-ko={bad}", "--registry", str(root),
               "--data-dir", str(tmp_path / "data"), "--set", "train.progress=false", "--set", "train.threads=1"])
    captured = capsys.readouterr()
    assert rc == EXIT_INPUT, captured.out + captured.err
    assert "=== 1 model(s)" in captured.out and "de-en" in captured.out.split("=== 1 model(s)")[1]
    assert "[en-ko] FAILED: DataError" in captured.err and "bad.tsv" in captured.err
    assert latest_version(root, "de-en") is not None and not (root / "en-ko").exists()


def test_help_pages_pair_the_same_element_of_the_same_page(tmp_path):
    from training.data.translation import HELP_FOLDERS, HELP_PACKAGES, read_libreoffice_help

    pages = {
        "en": '<p id="par_1" class="paragraph">Choose <span class="emph">Format - Cells</span>.</p>'
              '<h2 id="hd_2">Report Wizard</h2><p id="par_3">Only in English.</p>',
        "ko": '<p id="par_1" class="paragraph"><span class="emph">서식 - 셀</span>을 선택합니다.</p>'
              '<h2 id="hd_2">보고서 마법사</h2><p id="par_4">다른 문단</p>',
    }
    for lang, body in pages.items():
        folder = tmp_path / HELP_PACKAGES[lang] / "usr/share/libreoffice/help" / HELP_FOLDERS[lang] / "text"
        folder.mkdir(parents=True)
        (folder / "page.html").write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
    pairs = read_libreoffice_help("ko", tmp_path)
    assert [(p.src, p.tgt) for p in pairs] == [("Choose Format - Cells .", "서식 - 셀 을 선택합니다."),
                                               ("Report Wizard", "보고서 마법사")]


def test_help_pairs_join_train_only_and_never_a_held_out_source():
    from training.data.translation import add_help_pairs

    train = [Pair("Open", "열기", "lo-ko")]
    held_out = [Pair("Save As", "다른 이름으로 저장", "lo-ko")]
    extra = [Pair("save as", "다른 이름으로 저장하기", "lo-help-ko"), Pair("Open", "열다", "lo-help-ko"),
             Pair("Choose File - Open.", "파일 - 열기를 선택합니다.", "lo-help-ko")]
    out = add_help_pairs(train, held_out, extra, seed=1)
    assert sorted(p.src for p in out) == ["Choose File - Open.", "Open"]
    assert [p.tgt for p in out if p.src == "Open"] == ["열기"]  # the UI pair wins over the help one
