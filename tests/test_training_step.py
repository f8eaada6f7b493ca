"""One training step per text family, the generic trainer's log/plots/early stop, export parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelkit.onnx_session import SessionSettings, open_session
from training.config import validate_config
from training.export import export_all
from training.families.text_classifier import MODELS, TextClassifierConfig
from training.trainer import seed_everything, train


def _prepared(name, data_path, tmp_path, model=None, **train):
    fam = MODELS[name]
    raw = fam.presets()["smoke"]
    raw["data"] = {**raw.get("data", {}), "path": str(data_path)}
    raw["model"] = {**raw["model"], **(model or {})}
    raw["train"] = {**raw["train"], **train}
    cfg = validate_config(name, TextClassifierConfig, raw)
    splits = fam.prepare_data(cfg, tmp_path)
    seed_everything(cfg.train.seed)
    return fam, cfg, splits, fam.build_model(cfg, splits)


@pytest.mark.parametrize("name, kind", [("sentiment", "single"), ("topics", "multi")])
def test_one_training_step_reduces_loss_on_its_batch(name, kind, tiny_text_data, tmp_path):
    fam, cfg, splits, model = _prepared(name, tiny_text_data[kind], tmp_path)
    batch = next(iter(fam.batches(cfg, splits, "train", shuffle=True, seed=0)))
    assert batch["input_ids"].shape[0] == cfg.train.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.eval()  # compare losses without dropout noise
    with torch.no_grad():
        before = fam.loss(model, batch)
    model.train()
    fam.loss(model, batch).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = fam.loss(model, batch)
    assert torch.isfinite(before) and after.item() < before.item()


def test_trainer_logs_every_epoch_keeps_best_and_stops_early(tiny_text_data, tmp_path):
    fam, cfg, splits, model = _prepared(
        "sentiment", tiny_text_data["single"], tmp_path, epochs=6, lr=1e-9, patience=1, max_steps_per_epoch=2
    )
    # lr 1e-9: the metric cannot improve after epoch 1, so patience 1 stops at epoch 2
    result = train(fam, model, cfg, splits, log_path=tmp_path / "log.jsonl", plots_dir=tmp_path / "plots", label="t")
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert result.stopped_early and result.epochs_run == 2 == len(lines)
    assert lines[0]["best"] and {"epoch", "train_loss", "val_macro_f1", "val_loss", "lr", "seconds"} <= set(lines[0])
    assert result.best_epoch == 1
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 1000


def test_time_budget_ending_at_an_epoch_boundary_adds_no_empty_epoch(tiny_text_data, tmp_path, monkeypatch):
    """A budget that runs out before an epoch's first step ends the run there: no validation pass
    and no log record of a step-less epoch (it used to log train_loss NaN, seen on a GPU run)."""
    from training import trainer

    fam, cfg, splits, model = _prepared(
        "sentiment", tiny_text_data["single"], tmp_path, epochs=4, max_steps_per_epoch=2, max_minutes=1.0, patience=4
    )
    calls = []

    def sync(clock):  # the two budget checks of epoch 1 are in time, the first of epoch 2 is not
        calls.append(1)
        clock.synced = 0.0 if len(calls) <= 2 else 60.0
        return clock.synced

    monkeypatch.setattr(trainer._Clock, "sync", sync)
    result = train(fam, model, cfg, splits, log_path=tmp_path / "log.jsonl", plots_dir=None, label="t")
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1] and result.epochs_run == 1 and result.stopped_early
    assert lines[0]["steps"] == 2 and np.isfinite(lines[0]["train_loss"])


def test_trainer_learns_the_tiny_task(tiny_text_data, tmp_path):
    fam, cfg, splits, model = _prepared(
        "sentiment", tiny_text_data["single"], tmp_path, epochs=8, lr=3e-3, max_steps_per_epoch=None, patience=8
    )
    result = train(fam, model, cfg, splits, log_path=tmp_path / "log.jsonl", plots_dir=tmp_path / "p", label="t")
    assert result.best_metric > 0.8  # word cues make this easy; chance is ~0.33


@pytest.mark.parametrize("pooling", ["mean", "sqrt"])
def test_ngram_bag_reads_real_tokens_only(pooling, tiny_text_data, tmp_path):
    fam, cfg, splits, model = _prepared("sentiment", tiny_text_data["single"], tmp_path,
                                        model={"ngram_buckets": 1024, "ngram_dim": 16, "ngram_pooling": pooling})
    bag = model.ngrams.eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    padded = torch.tensor([[2, 40, 41, 42, 3, 0, 0, 0]])  # pad id 0, masked out (no bigram across the end)
    with torch.no_grad():
        a = bag(ids, torch.ones_like(ids))
        b = bag(padded, (padded != 0).long())
        swapped = bag(torch.tensor([[2, 41, 40, 42, 3]]), torch.ones_like(ids))  # same tokens, other bigrams
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, swapped, atol=1e-4)
    assert model.head.in_features == cfg.model.hidden_size + 16
    if pooling == "sqrt":  # sum / sqrt(9 unigrams and bigrams): the mean times 3
        bag.pooling = "mean"
        with torch.no_grad():
            assert torch.allclose(a, 3 * bag(ids, torch.ones_like(ids)), atol=1e-6)


@pytest.mark.parametrize("ngram_buckets", [0, 512])
def test_export_parity_both_exporters_and_int8(ngram_buckets, tiny_text_data, tmp_path):
    fam, cfg, splits, model = _prepared("topics", tiny_text_data["multi"], tmp_path,
                                        model={"ngram_buckets": ngram_buckets})
    model.eval()
    graphs = fam.export_graphs(model, cfg, splits)
    staging = tmp_path / "stage"
    staging.mkdir()
    result = export_all(graphs, cfg.export, staging, log=lambda *_: None)
    assert set(result.exporters.latency_ms) == {"legacy", "dynamo"}
    fp32, int8 = result.parity
    assert fp32.passed and fp32.max_abs_diff <= 1e-4 and fp32.n_inputs == len(splits.test)
    assert int8.variant == "int8" and int8.top1_agreement >= 0.9, int8  # the tiny task's int8 graph mostly agrees
    import onnx

    ops = {n.op_type for n in onnx.load(staging / "model.int8.onnx").graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"}, ops  # really quantized
    assert sorted(p.name for p in staging.iterdir()) == ["model.int8.onnx", "model.onnx"]  # one file per graph
    spec = result.graphs[0]
    assert spec.opset >= 17 and [i.name for i in spec.inputs] == ["input_ids", "attention_mask"]
    assert all(isinstance(d, str) for d in spec.inputs[0].shape)  # dynamic batch and sequence
    # the kept graph agrees with torch on a batch size and length it was not exported with
    session, _ = open_session(staging / "model.onnx", SessionSettings(provider="cpu"))
    enc = splits.state["encoder"]
    ids, mask = enc.pad(splits.state["encoded"]["val"][:3])
    with torch.no_grad():
        ref = graphs[0].module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    assert np.max(np.abs(ref - got)) <= 1e-4


def test_weight_average_ramps_up_swaps_in_and_out_and_round_trips():
    from training.trainer import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    expected = 1 - 2 / 11
    assert ema.shadow["weight"].item() == pytest.approx(expected)
    for _ in range(200):
        ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        model.weight.fill_(5.0)
    with ema.swapped_in(model):
        assert model.weight.item() == pytest.approx(ema.shadow["weight"].item())
    assert model.weight.item() == 5.0
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == ema.updates and torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_trainer_with_ema_keeps_the_averaged_weights(tiny_text_data, tmp_path):
    from training.trainer import WeightAverage

    fam, cfg, splits, model = _prepared("sentiment", tiny_text_data["single"], tmp_path, epochs=1,
                                        max_steps_per_epoch=5, ema_decay=0.5)
    start = WeightAverage(model, 0.5)  # replays the trainer's average from the same start
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *a, **k):
        out = original(self, *a, **k)
        start.update(model)
        seen.append(1)
        return out

    torch.optim.AdamW.step = step
    try:
        train(fam, model, cfg, splits, log_path=None, plots_dir=None, label="t")
    finally:
        torch.optim.AdamW.step = original
    assert len(seen) == 5
    state = model.state_dict()
    assert all(torch.allclose(state[k], v) for k, v in start.shadow.items())
