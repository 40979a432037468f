"""Prometheus recording and alerting rules and Alertmanager routing, generated from SLO specs.

Imports ``slo`` only.
"""
