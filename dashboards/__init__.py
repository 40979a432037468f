"""Grafana dashboards generated from SLO specs, and publishing them to Grafana.

Imports ``slo`` only.
"""
