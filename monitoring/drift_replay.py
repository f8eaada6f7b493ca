"""Replay held-out or shifted data through a registered model and track drift as production would.

Items go through the model's real runtime (``validate`` + ``predict``), their features are counted
by ``monitoring.metrics`` into the reference bins, and every ``per_minute`` items the counters are
snapshotted, as Prometheus would scrape them once a minute. From the snapshots:

- the drift statistic over a sliding window of ``window_minutes`` snapshots (the offline twin of
  the ``feature:modelserve_drift_psi:10m`` recording rule, ``modelkit.profile.psi``);
- a ``promtool test rules`` case with these exact counter series, expecting the drift alerts the
  offline statistic predicts (the real rules then decide).

``python -m monitoring.drift_replay --registry DIR --out drift.png`` replays every family it knows
(text classifier, image classifier, translator) in distribution and shifted, prints the statistic
and writes the plot for the README. Data comes from the training data loaders (torch-free), so this
is a development tool: the serving image does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from modelkit import profile, registry
from modelkit.manifest import Manifest, ReferenceProfile
from modelkit.runtimes import InputError, Runtime, create_runtime
from monitoring import drift
from monitoring.metrics import ServiceMetrics
from monitoring.prometheus_runner import PROMETHEUS_DIR

# Recording groups before alerts, as their order in the files; real Prometheus may lag one interval.
RULE_GROUP_ORDER = ["modelserve_requests", "modelserve_models", "modelserve_drift", "modelserve_alerts"]
MIN_REFERENCE = 500
# where the translation corpora are cached (training's --data-dir layout); downloads on first use
DEFAULT_DATA_DIR = Path(os.environ.get("SMOKE_DATA_DIR", Path.home() / ".cache" / "modelserve-data"))  # smaller manifest profiles are re-profiled on held-out data (smoke models: 60)


@dataclass
class Replay:
    """Cumulative per-bin counts after each simulated minute, and the windowed PSI per feature."""

    label: str
    manifest: Manifest
    per_minute: int
    window_minutes: int
    snapshots: list[dict[str, dict[str, float]]] = field(default_factory=list)  # minute -> feature -> bin -> count

    def window_counts(self, minute: int, feature: str) -> np.ndarray:
        """Counts per bin over the window ending at snapshot ``minute`` (as increase()[window])."""
        now = self.snapshots[minute][feature]
        then = self.snapshots[max(minute - self.window_minutes, 0)][feature]
        return np.asarray([now[b] - then[b] for b in now], dtype=float)

    def psi(self, minute: int, feature: str) -> float:
        counts = self.window_counts(minute, feature)
        if counts.sum() == 0:
            return float("nan")
        ref = list(self.reference(feature).values())
        return profile.psi(ref, counts / counts.sum())

    def reference(self, feature: str) -> dict[str, float]:
        return reference_bins(self.manifest)[feature]

    def psi_series(self) -> dict[str, list[float]]:
        """Feature -> PSI after each minute (minute 0 has no window yet and is skipped)."""
        return {f: [self.psi(m, f) for m in range(1, len(self.snapshots))] for f in self.snapshots[0]}

    def max_psi(self) -> list[float]:
        series = self.psi_series()
        return [max(s[i] for s in series.values()) for i in range(len(self.snapshots) - 1)]

    def armed(self) -> list[bool]:
        """After each minute: whether the window holds enough values for the drift alerts to apply."""
        return [all(self.window_counts(m, f).sum() >= drift.MIN_SAMPLES for f in self.snapshots[0])
                for m in range(1, len(self.snapshots))]

    def armed_max_psi(self) -> list[float]:
        """Max PSI over features, only at minutes where the alerts apply."""
        return [p for p, a in zip(self.max_psi(), self.armed()) if a]

    def requests(self) -> list[int]:
        return [m * self.per_minute for m in range(1, len(self.snapshots))]


def reference_bins(manifest: Manifest) -> dict[str, dict[str, float]]:
    """Feature -> bin label -> reference fraction, with the labels monitoring.metrics uses."""
    m = ServiceMetrics(CollectorRegistry())
    m.set_model_info(manifest.name, manifest.version, manifest.task, "replay", "ready", manifest=manifest)
    out: dict[str, dict[str, float]] = {}
    for sample in next(iter(f for f in m.reference_fraction.collect())).samples:
        out.setdefault(sample.labels["feature"], {})[sample.labels["bin"]] = sample.value
    return out


def load_runtime(registry_root: Path, name: str, version: str | None = None) -> Runtime:
    manifest, version_dir = registry.load_version(registry_root, name, version)
    runtime = create_runtime(manifest, version_dir)
    runtime.load()
    return runtime


def run_features(runtime: Runtime, items: Sequence[Any], batch_size: int = 32, **options: Any) -> list[dict]:
    """Runtime features of every valid item, in order (validate + predict, as the service does).

    Items the runtime refuses (the service's 4xx) never reach the drift counters and are skipped.
    """
    valid = []
    for x in items:
        try:
            valid.append(runtime.validate(x))
        except InputError:
            continue
    out: list[dict] = []
    for i in range(0, len(valid), batch_size):
        out.extend(r["features"] for r in runtime.predict(valid[i:i + batch_size], **options))
    return out


def reprofile(manifest: Manifest, features: Sequence[dict], bins: int = 10) -> Manifest:
    """The manifest with its reference profile rebuilt from ``features`` the way training builds it."""
    hists = {}
    for key in manifest.reference_profile.features:
        values = [f[key] for f in features]
        if isinstance(values[0], str):
            cats = list(manifest.labels) if set(values) <= set(manifest.labels) else sorted(set(values))
            hists[key] = profile.categorical_histogram(values, cats)
        else:
            hists[key] = profile.numeric_histogram([float(v) for v in values], bins)
    ref = ReferenceProfile(split="replay-reference", n_samples=len(features), features=hists)
    return manifest.model_copy(update={"reference_profile": ref})


def replay(manifest: Manifest, features: Sequence[dict], *, label: str, per_minute: int = 30,
           window_minutes: int = 10) -> Replay:
    """Count ``features`` minute by minute through monitoring.metrics and snapshot the bin counters."""
    m = ServiceMetrics(CollectorRegistry())
    name, version = manifest.name, manifest.version
    m.set_model_info(name, version, manifest.task, "replay", "ready", manifest=manifest)
    bins = reference_bins(manifest)
    result = Replay(label, manifest, per_minute, window_minutes)

    def snapshot() -> None:
        result.snapshots.append({
            f: {b: m.drift_bin.labels(name, version, f, b)._value.get() for b in bin_fracs}
            for f, bin_fracs in bins.items()
        })

    snapshot()
    for start in range(0, len(features) - per_minute + 1, per_minute):
        m.observe_predictions(name, version, manifest, features[start:start + per_minute])
        snapshot()
    return result


def promtool_case(rep: Replay) -> tuple[dict, list[dict], list[str]]:
    """A promtool test case: the replay's counters as series, expecting the drift alerts (warning and
    critical) the offline PSI predicts.

    Returns (test case, expected alerts, features expected to fire the warning).
    """
    manifest = rep.manifest
    base = {"model": manifest.name, "version": manifest.version}
    minutes = len(rep.snapshots) - 1
    series = []
    for feature, fracs in reference_bins(manifest).items():
        for b, frac in fracs.items():
            lbl = ", ".join(f'{k}="{v}"' for k, v in {**base, "feature": feature, "bin": b}.items())
            series.append({"series": f"modelserve_drift_reference_fraction{{{lbl}}}", "values": f"{frac!r}x{minutes}"})
            counts = " ".join(repr(float(s[feature][b])) for s in rep.snapshots)
            series.append({"series": f"modelserve_drift_bin_total{{{lbl}}}", "values": counts})
    # an alert (for: 5m) fires at the last minute iff its condition held at each of the last 6 evaluations
    for_minutes = int(drift.ALERT_FOR.rstrip("m"))
    tests, firing, expected = [], [], []
    for alertname, severity, threshold, words in [("ModelDriftWarning", "warning", drift.PSI_WARNING, "drifted"),
                                                  ("ModelDriftCritical", "critical", drift.PSI_CRITICAL,
                                                   "drifted strongly")]:
        exp_alerts = []
        for feature in rep.snapshots[0]:
            held = all(rep.psi(t, feature) > threshold
                       and rep.window_counts(t, feature).sum() >= drift.MIN_SAMPLES
                       for t in range(minutes - for_minutes, minutes + 1))
            if not held:
                continue
            if severity == "warning":
                firing.append(feature)
            exp_alerts.append({
                "exp_labels": {"severity": severity, **base, "feature": feature},
                "exp_annotations": {
                    "summary": f"{manifest.name}/{manifest.version}: {feature} {words} "
                               f"(PSI {rep.psi(minutes, feature):.3f})",
                    "description": "PSI of the live distribution vs the reference profile stayed above "
                                   f"{threshold} for {for_minutes} minutes.",
                },
            })
        expected.extend(exp_alerts)
        tests.append({"eval_time": f"{minutes}m", "alertname": alertname, "exp_alerts": exp_alerts})
    case = {"interval": "1m", "input_series": series, "alert_rule_test": tests}
    return case, expected, firing


def run_promtool(cases: list[dict]) -> subprocess.CompletedProcess:
    """Run ``promtool test rules`` on ``cases`` with the repository's recording and alert rules."""
    with tempfile.TemporaryDirectory(prefix="drift-replay-") as tmp:
        path = Path(tmp) / "replay_test.yml"
        path.write_text(yaml.safe_dump({
            "rule_files": [str(PROMETHEUS_DIR / "recording.yml"), str(PROMETHEUS_DIR / "alerts.yml")],
            "evaluation_interval": "1m", "group_eval_order": RULE_GROUP_ORDER, "tests": cases}, sort_keys=False))
        return subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)


# --- data per family (held-out in distribution, and shifted) ------------------------------------

def _rng_pick(items: Sequence[Any], n: int, seed: int) -> list[Any]:
    idx = np.random.default_rng(seed).permutation(len(items))[:n]
    return [items[i] for i in idx]


def text_data(n: int, seed: int = 0, data_dir: Path | None = None) -> dict[str, list[str]]:
    """Tweets (2n reference, n in distribution); shifted: German sentences (other language) and
    Debian package descriptions (other domain)."""
    from training.data.text import load_sentiment, topics_snapshot
    from training.data.translation import is_sentence, read_ding

    tweets = [e.text for e in _rng_pick(load_sentiment(), 3 * n, seed)]
    german = [p.src for p in read_ding() if is_sentence(p.src)]
    snapshot = topics_snapshot(Path(data_dir or DEFAULT_DATA_DIR))
    descriptions = [json.loads(line)["text"] for line in snapshot.read_text(encoding="utf-8").splitlines()]
    return {"reference": tweets[:2 * n], "in-distribution": tweets[2 * n:],
            "shifted: German text": _rng_pick(german, n, seed),
            "shifted: package descriptions": _rng_pick(descriptions, n, seed)}


def image_data(n: int, seed: int = 0, data_dir: Path | None = None) -> dict[str, list[np.ndarray]]:
    """Fashion-MNIST test images; shifted: the same kind of images inverted, and with heavy noise."""
    from training.data.fashion import load_fashion_mnist

    test = load_fashion_mnist().test
    images = _rng_pick(list(test.x), 4 * n, seed)
    rng = np.random.default_rng(seed)
    noisy = [np.clip(x.astype(float) + rng.normal(0, 80, x.shape), 0, 255).astype(np.uint8) for x in images[3 * n:]]
    return {"reference": images[:2 * n], "in-distribution": images[2 * n:3 * n],
            "shifted: inverted images": [255 - x for x in images[3 * n:]], "shifted: noisy images": noisy}


def translation_data(n: int, seed: int = 0, data_dir: Path | None = None) -> dict[str, list[str]]:
    """de-en corpus sources (German); wrong language: Korean UI strings and English sentences."""
    from training.data.translation import collect_pairs

    cache = Path(data_dir or DEFAULT_DATA_DIR) / "translation"
    de_en = _rng_pick(collect_pairs("de-en", cache), 4 * n, seed)
    korean = [p.tgt for p in _rng_pick(collect_pairs("en-ko", cache), n, seed)]
    return {"reference": [p.src for p in de_en[:2 * n]], "in-distribution": [p.src for p in de_en[2 * n:3 * n]],
            "shifted: Korean input": korean, "shifted: English input": [p.tgt for p in de_en[3 * n:]]}


FAMILIES: dict[str, tuple[str, Callable[..., dict[str, list]], dict]] = {
    # family -> (model name in the registry, data, predict options)
    "text": ("sentiment", text_data, {}),
    "image": ("fashion", image_data, {}),
    "translator": ("de-en", translation_data, {"max_new_tokens": 24}),
}


def replay_family(registry_root: Path, family: str, *, n: int = 1200, per_minute: int = 75,
                  model: str | None = None, data_dir: Path | None = None) -> tuple[Manifest, dict[str, Replay]]:
    """Replay a family's in-distribution and shifted sets; re-profile when the manifest's profile is small."""
    default_model, data_fn, options = FAMILIES[family]
    runtime = load_runtime(registry_root, model or default_model)
    data = data_fn(n, data_dir=data_dir)
    manifest = runtime.manifest
    if manifest.reference_profile.n_samples < MIN_REFERENCE:
        manifest = reprofile(manifest, run_features(runtime, data["reference"], **options))
    replays = {label: replay(manifest, run_features(runtime, items, **options), label=label, per_minute=per_minute)
               for label, items in data.items() if label != "reference"}
    return manifest, replays


def plot(results: dict[str, dict[str, Replay]], out: Path) -> Path:
    """One panel per family: max PSI over features vs requests replayed, with the alert thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (family, replays) in zip(axes[0], results.items()):
        for label, rep in replays.items():
            x, y, armed = np.asarray(rep.requests()), np.asarray(rep.max_psi()), np.asarray(rep.armed())
            line, = ax.plot(x[armed], y[armed], marker="o", ms=3, label=label,
                            color="tab:green" if label == "in-distribution" else None)
            ax.plot(x[~armed], y[~armed], ls=":", marker=".", ms=2, alpha=0.5, color=line.get_color())
        ax.axhline(drift.PSI_WARNING, color="orange", ls="--", lw=1, label=f"warning {drift.PSI_WARNING}")
        ax.axhline(drift.PSI_CRITICAL, color="red", ls="--", lw=1, label=f"critical {drift.PSI_CRITICAL}")
        ax.set_yscale("symlog", linthresh=0.05)
        ax.set_title(f"{family}: {next(iter(replays.values())).manifest.name}")
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"items replayed (dotted: < {drift.MIN_SAMPLES} in window, alerts off)")
        ax.set_ylabel(f"max PSI over features ({drift.WINDOW} window)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", type=Path, default=registry.default_root())
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="training data cache (translation corpora)")
    ap.add_argument("--items", type=int, default=1200, help="items per replay (twice that for a re-profile)")
    ap.add_argument("--per-minute", type=int, default=75, help="items per simulated scrape minute")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "drift_replay.png")
    args = ap.parse_args(argv)
    results, cases = {}, []
    for family in args.families.split(","):
        manifest, replays = replay_family(args.registry, family, n=args.items, per_minute=args.per_minute,
                                          data_dir=args.data_dir)
        results[family] = replays
        for label, rep in replays.items():
            psi = rep.armed_max_psi()
            case, _, firing = promtool_case(rep)
            cases.append(case)
            print(f"{family:10s} {manifest.name}/{manifest.version} {label:26s} max PSI over features, alert-armed "
                  f"windows: end {psi[-1]:.3f}, min {min(psi):.3f}, max {max(psi):.3f}; "
                  f"ModelDriftWarning expected for: {', '.join(firing) or 'none'}")
    r = run_promtool(cases)
    print(r.stdout.strip(), r.stderr.strip())
    print("plot:", plot(results, args.out))
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
