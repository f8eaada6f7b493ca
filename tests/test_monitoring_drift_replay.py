"""Drift replay per model family over the smoke models: held-out in-distribution data stays under the
warning threshold, shifted data crosses it, and promtool shows ModelDriftWarning firing on exactly
these counter series (the repository's recording and alert rules decide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitoring import drift
from monitoring.drift_replay import promtool_case, replay_family, run_promtool
from service_support import smoke_models  # noqa: F401 (fixture)

# family -> shifted sets that must cross the warning threshold
MUST_CROSS = {
    "text": ["shifted: German text", "shifted: package descriptions"],
    "image": ["shifted: inverted images", "shifted: noisy images"],
    "translator": ["shifted: Korean input"],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The smoke training's data cache when there is one (translation corpora), else a fresh one."""
    if os.environ.get("SMOKE_DATA_DIR"):
        return Path(os.environ["SMOKE_DATA_DIR"])
    trained = sorted(tmp_path_factory.getbasetemp().glob("smoke-data*"))
    return trained[0] if trained else tmp_path_factory.mktemp("replay-data")


@pytest.mark.parametrize("family", list(MUST_CROSS))
def test_drift_replay(smoke_models, data_dir, family):
    manifest, replays = replay_family(smoke_models, family, data_dir=data_dir)
    assert manifest.reference_profile.n_samples >= 500, "the reference must not be noise-dominated"

    in_dist = replays["in-distribution"]
    armed = in_dist.armed_max_psi()
    assert len(armed) >= 6, "the replay must cover the alert's window and its 5 minutes"
    assert max(armed) < drift.PSI_WARNING, f"in-distribution PSI {max(armed):.3f} crosses the warning threshold"

    for label in MUST_CROSS[family]:
        shifted = replays[label].armed_max_psi()
        assert len(shifted) >= 6, label
        assert min(shifted) > drift.PSI_WARNING, f"{label}: PSI {min(shifted):.3f} stays under the warning threshold"

    cases = []
    for label, rep in replays.items():
        case, expected, firing = promtool_case(rep)
        cases.append(case)
        if label == "in-distribution":
            assert not firing
        elif label in MUST_CROSS[family]:
            assert firing, f"{label}: no feature expected to alert"
    result = run_promtool(cases)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_promtool_fails_when_expectations_are_wrong(smoke_models, data_dir):
    """The generated promtool case can fail: expecting no alert on shifted images must not pass."""
    _, replays = replay_family(smoke_models, "image", data_dir=data_dir)
    case, expected, firing = promtool_case(replays["shifted: inverted images"])
    assert firing
    case["alert_rule_test"][0]["exp_alerts"] = []
    assert run_promtool([case]).returncode != 0
