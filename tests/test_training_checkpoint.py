"""Checkpoint files and batch sharding, without processes: atomic replacement, recipe checks,
RNG round trip, and every row of a global batch on exactly one rank."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training import checkpoint
from training.config import ConfigError
from training.distributed import DistContext, shard_rows
from training.families.text_classifier import MODELS
from training.trainer import shard_batch


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m" / checkpoint.CHECKPOINT_FILE
    checkpoint.save(path, {"state": {"global_step": 5}})

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError):
        checkpoint.save(path, {"state": {"global_step": 10}})
    assert checkpoint.load(path)["state"]["global_step"] == 5
    assert [p.name for p in path.parent.iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temporary left


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoint.save(tmp_path / "c.pt", {"rng": [checkpoint.rng_state()]})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_recipe_mismatch_names_every_field(tmp_path):
    from training.cli import resolve_configs

    def config(*sets):
        return resolve_configs(["sentiment"], "smoke", sets=list(sets))["sentiment"]

    saved = checkpoint.recipe(config(), "abc")
    # threads, device, progress bar and checkpoint interval do not change what is trained
    same = config("train.threads=2", "train.device=cpu", "train.progress=false", "train.checkpoint_every=7")
    checkpoint.check_recipe(saved, checkpoint.recipe(same, "abc"), "sentiment", tmp_path)
    other = config("train.lr=0.1", "model.hidden_size=64", "train.threads=2")
    with pytest.raises(ConfigError) as err:
        checkpoint.check_recipe(saved, checkpoint.recipe(other, "def"), "sentiment", tmp_path)
    message = str(err.value)
    for field in ("sentiment.train.lr", "sentiment.model.hidden_size", "sentiment.data.fingerprint"):
        assert field in message
    assert "train.threads" not in message  # threads do not change what is trained


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 2, 7, 27, 64])
def test_each_row_lands_on_exactly_one_rank(n, world):
    shares = [shard_rows(n, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert [i for a, b in shares for i in range(a, b)] == list(range(n))
    assert max(b - a for a, b in shares) - min(b - a for a, b in shares) <= 1


def test_uneven_shares_are_weighed_to_the_global_mean():
    """Mean of the ranks' scaled share losses == the whole batch's mean loss, also for an empty share."""
    family = MODELS["sentiment"]
    values = torch.arange(5, dtype=torch.float32) ** 2
    batch = {"input_ids": torch.zeros(5, 3, dtype=torch.long), "labels": values}
    for world in (2, 3, 8):
        total = 0.0
        for rank in range(world):
            local, scale = shard_batch(family, batch, DistContext(rank=rank, world_size=world))
            total += local["labels"].mean().item() * scale
        assert total / world == pytest.approx(values.mean().item())
