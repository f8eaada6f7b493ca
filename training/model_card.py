"""MODEL_CARD.md from a manifest: data, metrics vs baseline, gate, parity, limits, intended use."""

from __future__ import annotations

from pathlib import Path

from modelkit.manifest import Manifest


def _table(rows: dict[str, dict[str, float]]) -> str:
    metrics = sorted({m for r in rows.values() for m in r})
    lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[m]:.4f}" if m in r else "-" for m in metrics) + " |")
    return "\n".join(lines)


def _thresholds(t: list[float]) -> str:
    if len(t) == 1:
        return f"{t[0]:g} (global)"
    return f"per label, {min(t):g}..{max(t):g}"


def render(manifest: Manifest, notes: dict[str, str], plots: list[str]) -> str:
    m = manifest
    rows = {f"model ({v})": vals for v, vals in m.metrics.items()}
    rows.update({f"baseline: {b}": vals for b, vals in m.baseline_metrics.items()})
    t = m.training
    parts = [
        f"# {m.name} {m.version}",
        "",
        f"Task: **{m.task}**. {m.description}",
        f"Gate: **{'PASSED' if m.gate.passed else 'FAILED'}**"
        f"{'' if m.gate.passed else ' (not servable; LATEST not updated)'}.",
        "",
        "## Intended use",
        notes.get("intended use", "See the task above."),
        "",
        "## Data",
        f"- source: {m.dataset.source}" + (f" (licence: {m.dataset.licence})" if m.dataset.licence else ""),
        f"- split sizes (seed {m.dataset.seed}, deduplicated, no example in two splits): "
        + ", ".join(f"{k} {v}" for k, v in m.dataset.split_sizes.items()),
        f"- fingerprint (sha256 of the prepared examples): `{m.dataset.fingerprint}`",
        f"- labels ({len(m.labels)}): " + ", ".join(m.labels[:30]) + (" ..." if len(m.labels) > 30 else ""),
        "",
        *(["## Pretraining", notes["pretraining"], ""] if notes.get("pretraining") else []),
        f"## Test metrics (headline: {m.headline_metric})",
        _table(rows),
        "",
        f"Post-processing: {m.postprocessing.activation}"
        + (f", decision thresholds tuned on validation: {_thresholds(m.postprocessing.thresholds)}" if m.postprocessing.thresholds else "")
        + ".",
        "",
        "## Gate",
        *[f"- {r}" for r in m.gate.reasons],
        "",
        "## Export",
        *[
            f"- {p.variant}: max abs logit diff vs torch {p.max_abs_diff:.2e} on {p.n_inputs} test inputs"
            + (f" (tolerance {p.tolerance:g})" if p.tolerance else "")
            + (f", top-1 agreement {p.top1_agreement:.4f}" if p.top1_agreement is not None else "")
            + f" -> {'pass' if p.passed else 'FAIL'}"
            for p in m.parity
        ],
    ]
    if m.exporters:
        parts.append(f"- exporter kept: {m.exporters.chosen}; ORT latency (ms): "
                     + ", ".join(f"{k} {v}" for k, v in m.exporters.latency_ms.items()))
    parts += [
        *[f"- {g.path}: {g.role}/{g.variant}, opset {g.opset}, {g.exporter} exporter" for g in m.graphs],
        "",
        "## Training",
        f"- preset `{t.preset}`, {t.num_parameters:,} parameters, {t.duration_s:.0f} s on {t.device}",
        f"- command: `{t.command}`",
        f"- git commit: {m.git_commit or 'unknown'}",
        "",
        "## Limits",
        notes.get("limits", "Not evaluated beyond the test split above."),
        "",
        "## Plots",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
    ]
    return "\n".join(parts)


def write_model_card(path: Path, manifest: Manifest, notes: dict[str, str], plots: list[str]) -> None:
    path.write_text(render(manifest, notes, plots), encoding="utf-8")


def render_imported(manifest: Manifest, notes: dict[str, str]) -> str:
    """Card of a version made by ``python -m training import``: says plainly what was and was not checked."""
    m = manifest
    gate = "PASSED" if m.gate.passed else "FAILED (not servable; LATEST not updated)"
    if m.gate.passed and not m.gate.criteria:
        gate = "NOT GATED by this pipeline"
    parts = [
        f"# {m.name} {m.version} (IMPORTED)",
        "",
        f"**Imported ONNX model: not trained, exported or gated by this pipeline.** Task: **{m.task}**. "
        + m.description,
        f"Gate: **{gate}**.",
        "",
        "## Origin",
        f"- source: {m.dataset.source}" + (f" (licence: {m.dataset.licence})" if m.dataset.licence else ""),
        f"- import command: `{m.training.command}`",
        f"- {m.training.num_parameters:,} parameters (graph initializers)",
        *[f"- {g.path}: {g.role}, opset {g.opset}" for g in m.graphs],
        "- original files and their sha256: `IMPORT.json`",
        "",
        "## Labels",
        f"{len(m.labels)}: " + ", ".join(m.labels[:30]) + (" ..." if len(m.labels) > 30 else "") if m.labels
        else "none (translation)",
        "",
        "## Checks at import",
        *[f"- {line}" for line in notes.get("checks", "").splitlines() if line],
        *[
            f"- parity ({p.variant}): {p.notes}: max abs diff {p.max_abs_diff:.2e} on {p.n_inputs} items"
            + (f" (tolerance {p.tolerance:g})" if p.tolerance else "")
            + (f", top-1 agreement {p.top1_agreement:.4f}" if p.top1_agreement is not None else "")
            + f" -> {'pass' if p.passed else 'FAIL'}"
            for p in m.parity
        ],
        "",
        f"## Metrics (headline: {m.headline_metric})",
        _table({f"model ({v})": vals for v, vals in m.metrics.items()}) if m.metrics
        else "None measured: no labelled eval file was given at import.",
        "",
        "## Gate",
        *[f"- {r}" for r in m.gate.reasons],
        "",
        "## Drift reference",
        f"Computed by the serving runtime on the sample file given at import ({m.reference_profile.n_samples} items): "
        + ", ".join(sorted(m.reference_profile.features)) + ".",
        "",
        "## Limits",
        notes.get("limits", "Only what is listed under checks was verified here; quality on real traffic is the "
                  "owner's claim, not this pipeline's."),
        "",
    ]
    return "\n".join(parts)
