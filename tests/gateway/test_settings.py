"""Settings are made in one place (``gateway/settings.py``) from config models that stay data;
``admin.status_source`` is still accepted as the first name of ``admin.status_backend``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from core.configfile import ConfigError
from gateway import settings
from gateway.roles import Role
from tests.support.cli import vitalgate
from tests.support.gateway import gateway_config
from vitalgate.config import ProductConfig, load_config


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """``model`` and every model its fields hold, however nested (lists, dicts, optionals)."""
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            t = stack.pop()
            if inspect.isclass(t) and issubclass(t, BaseModel):
                _models(t, seen)
            stack.extend(getattr(t, "__args__", ()))
    return seen


def test_the_config_models_are_data_with_no_settings_of_their_own() -> None:
    models = _models(ProductConfig, set())
    assert len(models) > 20  # the whole tree was walked: every section, nested ones too
    own = {
        f"{m.__name__}.{name}"
        for m in models
        for name, value in vars(m).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }
    assert own == set()


def _write(tmp_path: Path, admin: dict[str, Any]) -> Path:
    path = gateway_config(tmp_path, 9)
    doc = yaml.safe_load(path.read_text())
    doc["admin"].update(admin)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("key", ["status_backend", "status_source"])
def test_status_backend_is_also_read_under_its_first_name(tmp_path: Path, key: str) -> None:
    path = _write(tmp_path, {key: {"prometheus_url": "http://prom.example:9090", "source": "raw"}})
    backend = load_config(path).gateway.admin.status_backend
    assert backend is not None
    assert (backend.prometheus_url, backend.source) == ("http://prom.example:9090", "raw")


def test_status_backend_and_status_source_together_are_one_clear_problem(tmp_path: Path) -> None:
    url = "http://prom.example:9090"
    path = _write(
        tmp_path, {"status_backend": {"prometheus_url": url}, "status_source": {"prometheus_url": url}}
    )
    proc = vitalgate("check", "--config", str(path), check=False)
    assert proc.returncode == 1
    problem = proc.stderr.splitlines()[0]
    assert problem.startswith(f"{path}:")
    assert problem.endswith(
        "admin: status_source is the old name of status_backend: give only status_backend"
    ), problem


def test_a_problem_inside_the_old_name_is_reported_under_it(tmp_path: Path) -> None:
    path = _write(tmp_path, {"status_source": {"prometheus_url": "ftp://x"}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.field == "admin.status_source.prometheus_url"
    assert path.read_text().splitlines()[problem.line - 1].lstrip().startswith("prometheus_url")


def test_paths_are_resolved_against_the_config_folder(tmp_path: Path) -> None:
    path = gateway_config(
        tmp_path,
        9,
        extra={
            "listen": "[::1]:0",
            "telemetry": {"access_log": {"path": "logs/access.jsonl"}, "store": {"path": "var/s.db"}},
            "limits": {"max_client_connections": 50},
        },
    )
    config = load_config(path)
    listener = settings.listener_settings(config, Role("worker", 1, 2, port=8443))
    assert (listener.host, listener.port, listener.max_client_connections) == ("::1", 8443, 50)
    assert listener.upstream_connections == 200  # two upstreams, 100 connections each by default
    assert settings.access_log_target(config) == tmp_path / "logs" / "access.jsonl"
    store = settings.store_settings(config)
    assert store is not None
    assert (store.path, store.minute_days, store.hour_days) == (tmp_path / "var" / "s.db", 35, 400)


def test_a_probe_carries_its_facility_the_way_the_first_source_reads_it(tmp_path: Path) -> None:
    path = gateway_config(
        tmp_path,
        9,
        extra={
            "facilities": {"from": [{"path_segment": 1}], "known": {"st-marys": {"name": "St Mary's"}}},
            "probes": [{"upstream": "fhir", "facilities": ["st-marys"]}, {"upstream": "fhir"}],
        },
    )
    targets = settings.probe_targets(load_config(path))
    assert [(t.facility, t.path) for t in targets] == [
        ("st-marys", "/fhir/st-marys/metadata"),
        ("unknown", "/fhir/metadata"),
    ]
