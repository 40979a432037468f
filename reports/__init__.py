"""Per-facility uptime reports and the built-in status pages.

Imports ``slo`` only.
"""
