"""Quality gate: a model becomes servable only if every configured criterion holds."""

from __future__ import annotations

from modelkit.manifest import GateCriterion, GateResult, ParityResult

from .config import ConfigError


def check_baseline_names(model: str, criteria: list[GateCriterion], baselines: dict[str, dict]) -> None:
    """ConfigError (before training) when a criterion names a baseline that does not exist."""
    for i, c in enumerate(criteria):
        if c.baseline is not None and c.baseline not in baselines:
            raise ConfigError(
                f"{model}.gate.criteria[{i}].baseline: unknown baseline {c.baseline!r} (have: {', '.join(baselines)})"
            )
        if c.baseline is None and (c.max_below_baseline is not None or c.min_above_baseline is not None):
            raise ConfigError(f"{model}.gate.criteria[{i}]: max_below_baseline/min_above_baseline need 'baseline'")


def evaluate_gate(
    model: str,
    criteria: list[GateCriterion],
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    parity: list[ParityResult] = (),
) -> GateResult:
    """Pass/fail with one readable line per criterion (and per failed parity check)."""
    reasons: list[str] = []
    passed = True
    for i, c in enumerate(criteria):
        if c.metric not in metrics:
            raise ConfigError(f"{model}.gate.criteria[{i}].metric: {c.metric!r} not computed (have: {', '.join(sorted(metrics))})")
        value = metrics[c.metric]
        if c.min_value is not None:
            ok = value >= c.min_value
            passed &= ok
            reasons.append(f"{'PASS' if ok else 'FAIL'}: {c.metric} {value:.4f} {'>=' if ok else '<'} minimum {c.min_value:.4f}")
        if c.baseline is not None:
            base = baselines[c.baseline].get(c.metric)
            if base is None:
                raise ConfigError(f"{model}.gate.criteria[{i}]: baseline {c.baseline!r} has no metric {c.metric!r}")
            if c.max_below_baseline is not None:
                floor = base - c.max_below_baseline
                ok = value >= floor
                passed &= ok
                reasons.append(
                    f"{'PASS' if ok else 'FAIL'}: {c.metric} {value:.4f} vs {c.baseline} {base:.4f} "
                    f"(allowed shortfall {c.max_below_baseline:.4f}, floor {floor:.4f})"
                )
            if c.min_above_baseline is not None:
                floor = base + c.min_above_baseline
                ok = value >= floor
                passed &= ok
                reasons.append(
                    f"{'PASS' if ok else 'FAIL'}: {c.metric} {value:.4f} vs {c.baseline} {base:.4f} "
                    f"(required margin {c.min_above_baseline:.4f}, floor {floor:.4f})"
                )
    for p in parity:
        if not p.passed:
            passed = False
            reasons.append(f"FAIL: {p.variant} parity check ({p.notes or ''}; top1 agreement {p.top1_agreement})")
    if not criteria:
        reasons.append("PASS: no gate criteria configured")
    return GateResult(passed=passed, criteria=list(criteria), reasons=reasons)
