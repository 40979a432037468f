"""The whole gateway.yaml, as the ``vitalgate`` command loads it: the gateway's sections
(``gateway.config``) and those of the generators that read the same file, ``alerting:``
(``alerts.config``) and ``dashboards:`` (``dashboards.config``). Each section's schema lives
with the code that uses it; this composition root puts the document together.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alerts.config import AlertingConfig, alerting_problems
from core.configfile import ConfigError, Problem, read_yaml, validate
from dashboards.config import DashboardsConfig, dashboards_problems
from gateway.config import Config, GatewayConfig
from gateway.config import load_config as load_document
from vitalgate.routefilters import route_filter_problems


class ProductConfig(GatewayConfig):
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    dashboards: DashboardsConfig = Field(default_factory=DashboardsConfig)


def load_config(path: str | Path) -> Config[ProductConfig]:
    """Load gateway.yaml and the slos.yaml it names; raise ConfigError with every problem,
    the SLOs' route filters checked against the routes included."""
    try:
        config = load_document(path, ProductConfig, (alerting_problems, dashboards_problems))
    except ConfigError as exc:
        raise ConfigError(_sorted(Path(path), [*exc.problems, *_route_filters(Path(path))])) from None
    problems = _route_filters(config.path, config.gateway)
    if problems:
        raise ConfigError(_sorted(config.path, problems))
    return config


def _route_filters(path: Path, gateway: ProductConfig | None = None) -> list[Problem]:
    """Route filters no route produces; none to say while gateway.yaml itself is invalid or
    slos.yaml cannot be read (those problems are reported as they are)."""
    try:
        if gateway is None:
            gateway = validate(ProductConfig, read_yaml(path))
        if gateway.slos is None:
            return []
        slos_path = Path(gateway.slos) if Path(gateway.slos).is_absolute() else path.parent / gateway.slos
        return route_filter_problems(gateway, read_yaml(slos_path))
    except ConfigError:
        return []


def _sorted(path: Path, problems: list[Problem]) -> list[Problem]:
    """In the order load_document reports them: gateway.yaml first, then by position."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda q: (q.file != str(path), q.file, q.line, q.column))
