"""A run killed mid-epoch (SIGKILL, a real process) and resumed with ``--resume`` ends where the
uninterrupted run ends: the same optimizer steps with the same losses and learning rates, the
same validation results and the same test metrics.

Both runs are one process with one thread on the same prepared data, and the checkpoint holds
every RNG state and the data position, so the resumed run repeats the lost steps exactly: the
tolerance is 1e-6 on losses and metrics (equal in practice), a margin for nothing but
summation order in case a library picks another kernel.
"""

from __future__ import annotations

import signal

import pytest

from tests.training_support import jsonl, only_version, run, share_prepared_data, train_cmd, versions
from training.checkpoint import CHECKPOINT_FILE, DATA_FILE, PUBLISHED_FILE
from training.trainer import KILL_AT_STEP_ENV

pytest.importorskip("torch", reason="training extras not installed")

TOLERANCE = 1e-6
COMMON = ["train.threads=1", 'export.exporters=["legacy"]', "train.progress=false"]
CASES = {
    # 2 epochs x 12 steps; checkpoints at 5, 10, 12 (epoch), 15, 20: killed after step 17, mid-epoch 2,
    # so steps 16 and 17 are lost and trained again from the step-15 checkpoint
    "sentiment": (["train.checkpoint_every=5"], 17, 15),
    # 2 epochs x 5 steps, augmented batches, conv stem, random erasing and a weight average (its state is
    # checkpointed too): killed after step 7 (epoch 2), resumed from step 6
    "fashion": (["train.epochs=2", "train.max_steps_per_epoch=5", "train.checkpoint_every=3", "train.ema_decay=0.9",
                 "model.stem=conv", "model.erase_prob=0.5"], 7, 6),
}


@pytest.mark.parametrize("name", list(CASES))
def test_killed_then_resumed_run_equals_the_uninterrupted_one(name, tmp_path):
    extra, kill_at, resumed_at = CASES[name]
    sets = COMMON + extra
    data, ref_ck, ck = tmp_path / "data", tmp_path / "ck-ref", tmp_path / "ck"
    share_prepared_data([name], sets, data, ref_ck, ck)

    reference = run(train_cmd([name], tmp_path / "ref", ref_ck, data, sets))
    assert reference.returncode == 0, reference.stderr[-3000:]

    registry = tmp_path / "reg"
    # --resume with no checkpoint yet: a fresh start on the shared prepared data
    killed = run(train_cmd([name], registry, ck, data, sets), env={KILL_AT_STEP_ENV: str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert versions(registry, name) == []  # nothing published by the killed run
    assert (ck / name / CHECKPOINT_FILE).is_file() and (ck / name / DATA_FILE).is_file()

    # a checkpoint is only resumed by the recipe that wrote it: the message names the field
    other = run(train_cmd([name], registry, ck, data, [*sets, "train.lr=0.01"]))
    assert other.returncode == 2 and f"{name}.train.lr: checkpoint" in other.stderr, other.stderr[-2000:]

    resumed = run(train_cmd([name], registry, ck, data, sets))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ck / name / CHECKPOINT_FILE}: step {resumed_at}," in resumed.stdout
    assert [p.name for p in (ck / name).iterdir()] == [PUBLISHED_FILE]  # checkpoint and data removed

    (ref_dir, ref_manifest), (res_dir, res_manifest) = only_version(tmp_path / "ref", name), only_version(registry, name)
    ref_steps, res_steps = jsonl(ref_dir / "train_steps.jsonl"), jsonl(res_dir / "train_steps.jsonl")
    assert [(s["step"], s["epoch"], s["lr"]) for s in ref_steps] == [(s["step"], s["epoch"], s["lr"]) for s in res_steps]
    assert len(res_steps) > kill_at
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ref_steps, res_steps)) <= TOLERANCE
    ref_epochs, res_epochs = jsonl(ref_dir / "train_log.jsonl"), jsonl(res_dir / "train_log.jsonl")
    assert len(ref_epochs) == len(res_epochs)
    for a, b in zip(ref_epochs, res_epochs):
        for key in a:
            if key.startswith(("val_", "train_loss")):
                assert abs(a[key] - b[key]) <= TOLERANCE, (key, a[key], b[key])
        assert a["best"] == b["best"]
    for variant, metrics in ref_manifest.metrics.items():
        for key, value in metrics.items():
            assert abs(res_manifest.metrics[variant][key] - value) <= TOLERANCE, (variant, key)

    # a restarted job (--resume again) reports what the run published instead of training it again
    again = run(train_cmd([name], registry, ck, data, sets))
    assert again.returncode == 0 and f"already published {name}/{res_dir.name}" in again.stdout
    assert versions(registry, name) == [res_dir]


def test_a_restarted_job_does_not_retrain_a_model_that_failed_its_gate(tiny_text_data, tmp_path):
    """--resume after a gate failure: exit 1 again, naming the failed version, and no second version."""
    import json

    gate = json.dumps([{"metric": "macro_f1", "min_value": 1.01}])
    sets = [*COMMON, f"gate.criteria={gate}"]
    cmd = train_cmd(["sentiment"], tmp_path / "reg", tmp_path / "ck", tmp_path / "data", sets)
    cmd += ["--data", f"sentiment={tiny_text_data['single']}"]
    first = run(cmd)
    assert first.returncode == 1 and "GATE FAILED" in first.stderr, first.stderr[-2000:]
    (failed,) = versions(tmp_path / "reg", "sentiment")
    again = run(cmd)
    assert again.returncode == 1 and f"already published sentiment/{failed.name}" in again.stdout
    assert "GATE FAILED" in again.stderr and versions(tmp_path / "reg", "sentiment") == [failed]
