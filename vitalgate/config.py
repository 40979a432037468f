"""The whole gateway.yaml, as the ``vitalgate`` command loads it: the gateway's sections
(``gateway.config``) and those of the generators that read the same file, ``alerting:``
(``alerts.config``) and ``dashboards:`` (``dashboards.config``). Each section's schema lives
with the code that uses it; this composition root puts the document together.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alerts.config import AlertingConfig, alerting_problems
from dashboards.config import DashboardsConfig, dashboards_problems
from gateway.config import Config, GatewayConfig
from gateway.config import load_config as load_document


class ProductConfig(GatewayConfig):
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    dashboards: DashboardsConfig = Field(default_factory=DashboardsConfig)


def load_config(path: str | Path) -> Config[ProductConfig]:
    """Load gateway.yaml and the slos.yaml it names; raise ConfigError with every problem."""
    return load_document(path, ProductConfig, (alerting_problems, dashboards_problems))
