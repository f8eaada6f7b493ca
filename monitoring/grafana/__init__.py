"""Grafana dashboards (generated JSON) and provisioning."""
