"""Monitoring: service metrics (metrics.py), Prometheus rules, Grafana dashboards, drift replay."""
