"""The PromQL of provisioned dashboards, with Grafana variables filled in, for tests and checks."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
# Grafana's built-in interval macros, replaced by a window that suits a 1 s scrape interval.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))}


def panel_targets(dashboard: dict) -> Iterator[tuple[dict, dict]]:
    """(panel, target) for every query target, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                yield p, t


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Fill ``$var`` / ``${var}`` with ``values`` (regex-safe for =~ matchers) and the interval macros."""
    for macro, window in MACROS.items():
        expr = expr.replace(macro, window)

    def fill(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", fill, expr)


def variables(dashboard: dict) -> list[dict]:
    return dashboard.get("templating", {}).get("list", [])
