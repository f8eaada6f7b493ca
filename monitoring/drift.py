"""Drift method constants shared by the Prometheus rules, the dashboards, tests and the replay script.

The service counts every profiled feature's live values into the manifest's reference bins
(``modelserve_drift_bin_total``) and exposes the reference fractions as gauges
(``modelserve_drift_reference_fraction``). Recording rules in ``prometheus/recording.yml`` turn
both into the Population Stability Index over a sliding ``WINDOW`` (and the Jensen-Shannon
divergence, base 2, for the dashboards):

    PSI = sum_bins (live - ref) * ln(live / ref),  both floored at ``PSI_EPS``

which is ``modelkit.profile.psi``. Because the live fractions come from ``rate()`` of counters summed
over workers and replicas, the statistic covers all of them. Alerts fire when PSI stays above a
threshold for ``ALERT_FOR`` while the window held at least ``MIN_SAMPLES`` values (with fewer,
sampling noise alone gives PSI of about (bins - 1) / samples).
"""

from __future__ import annotations

WINDOW = "10m"
PSI_EPS = 1e-4
PSI_WARNING = 0.1  # the usual "moderate shift" level
PSI_CRITICAL = 0.25  # the usual "significant shift" level
MIN_SAMPLES = 500
ALERT_FOR = "5m"
