"""torchrun on CPU (gloo): two processes train the same recipe as one, and rank 0 alone publishes.

One run of ``python -m training train`` and one of ``torchrun --nproc-per-node 2 -m training
train`` (real processes) over the same prepared smoke data, for a text classifier, the ViT and
a translator (token-budget batches: the ranks' shares are weighed by target tokens).

Tolerance for the per-step training loss: 1e-4 absolute. The two runs take the same optimizer
steps on the same rows; what differs is float32 summation order (each rank reduces half the
batch, DDP averages the two gradients over gloo), which moved the losses by at most ~1e-6 over
these steps when measured. A sharding mistake moves them by 1e-2 or more within a few steps:
ranks seeing the same rows, an unweighted mean over uneven shares (the odd global batch sizes
below make the shares uneven), a gradient not averaged, or a batch built from another seed.
Dropout is off for the text models: its masks are drawn per process, so with dropout the curves
agree only statistically.
"""

from __future__ import annotations

import pytest

from tests.training_support import jsonl, only_version, run, share_prepared_data, train_cmd, versions
from training.checkpoint import PUBLISHED_FILE

pytest.importorskip("torch", reason="training extras not installed")

MODELS = ["sentiment", "fashion", "de-en"]
SETS = [
    "train.threads=1", 'export.exporters=["legacy"]', "export.quantize=false",
    "sentiment.model.dropout=0", "sentiment.train.batch_size=27",  # 27 rows: ranks get 14 and 13
    "fashion.train.batch_size=33", "fashion.train.epochs=2", "fashion.train.max_steps_per_epoch=6",
    "de-en.model.dropout=0", "de-en.train.max_steps_per_epoch=6", "train.progress=false",
]
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{processes: (completed process, registry)} for 1 and 2 processes on the same data."""
    tmp = tmp_path_factory.mktemp("ddp")
    share_prepared_data(MODELS, SETS, tmp / "data", tmp / "ck1", tmp / "ck2")
    out = {}
    for n in (1, 2):
        proc = run(train_cmd(MODELS, tmp / f"reg{n}", tmp / f"ck{n}", tmp / "data", SETS, nproc=n))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[n] = (proc, tmp / f"reg{n}", tmp / f"ck{n}")
    return out


@pytest.mark.parametrize("name", MODELS)
def test_two_processes_give_the_one_process_loss_curve(runs, name):
    (one, _), (two, _) = (only_version(runs[n][1], name) for n in (1, 2))
    steps1, steps2 = jsonl(one / "train_steps.jsonl"), jsonl(two / "train_steps.jsonl")
    assert len(steps1) == len(steps2) >= 12
    assert [s["lr"] for s in steps1] == [s["lr"] for s in steps2]
    gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(steps1, steps2)]
    assert max(gaps) <= LOSS_TOLERANCE, f"largest per-step loss gap {max(gaps):.2e} (step {gaps.index(max(gaps)) + 1})"
    # the curve moved: equal curves are not two flat lines
    assert max(s["loss"] for s in steps1) - min(s["loss"] for s in steps1) > 50 * LOSS_TOLERANCE
    # validation rows are split over the ranks and gathered: the same validation results per epoch
    # (loss within the tolerance; accuracy within one item, as a near-tie may flip an argmax;
    # the translator's greedy chrF is left out for the same reason)
    epochs1, epochs2 = jsonl(one / "train_log.jsonl"), jsonl(two / "train_log.jsonl")
    assert len(epochs1) == len(epochs2) and epochs1[0].keys() == epochs2[0].keys()
    n_val = only_version(runs[1][1], name)[1].dataset.split_sizes["val"]
    for a, b in zip(epochs1, epochs2):
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) <= LOSS_TOLERANCE
        if "val_accuracy" in a:
            assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1 / n_val + 1e-9


def test_rank_zero_alone_publishes(runs):
    proc, registry, checkpoints = runs[2]
    for name in MODELS:
        folder = registry / name
        assert len(versions(registry, name)) == 1, sorted(p.name for p in folder.iterdir())
        assert not [p for p in folder.iterdir() if p.name.startswith(".staging")]
        _, manifest = only_version(registry, name)
        assert manifest.training.world_size == 2 and manifest.training.device.startswith("2 x cpu")
        assert only_version(runs[1][1], name)[1].training.world_size == 1
        # published: checkpoint and data gone, only the record of what the run published is left
        assert [p.name for p in (checkpoints / name).iterdir()] == [PUBLISHED_FILE]
    # one summary, from rank 0 (torchrun interleaves both ranks' output into ours)
    assert proc.stdout.count(f"=== {len(MODELS)} model(s) in") == 1
    assert proc.stdout.count("registered:") == len(MODELS)
