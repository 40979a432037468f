"""The generated rules and routes as prometheus-operator resources: a ``PrometheusRule`` with
exactly the groups of ``rules.yaml``, and an ``AlertmanagerConfig`` with the routes, receivers
and inhibition of ``alertmanager.yml``.

The operator picks a ``PrometheusRule`` up only when its labels match the Prometheus resource's
``ruleSelector`` (and an ``AlertmanagerConfig`` the Alertmanager's
``alertmanagerConfigSelector``); one that matches nothing is ignored without a word, so the
labels are the user's to set (``--label``) and ``vitalgate alerts verify`` is how to find out.

A PagerDuty routing key is a secret: the resource names a key of a Kubernetes Secret for it
instead of carrying it, as the ``AlertmanagerConfig`` schema requires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from alerts.alertmanager import Routing, build_alertmanager

RULE_API = "monitoring.coreos.com/v1"
ROUTES_API = "monitoring.coreos.com/v1alpha1"
SECRET = "vitalgate-alerting"  # noqa: S105  a Secret's name, not a secret
"""The Secret whose keys hold the PagerDuty routing keys: ``<receiver>-routing-key``."""

_MATCHER = re.compile(
    r'^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"$'
)


def _metadata(name: str, namespace: str | None, labels: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {"app.kubernetes.io/name": "vitalgate", "app.kubernetes.io/component": "slo", **labels}
    return meta


def prometheus_rule(
    doc: dict[str, Any],
    name: str = "vitalgate-slo",
    namespace: str | None = None,
    labels: Mapping[str, str] = {},
) -> dict[str, Any]:
    """``rules.yaml``'s groups, unchanged, as the spec of a ``PrometheusRule``."""
    return {
        "apiVersion": RULE_API,
        "kind": "PrometheusRule",
        "metadata": _metadata(name, namespace, labels),
        "spec": {"groups": doc["groups"]},
    }


def _matchers(texts: list[str]) -> list[dict[str, str]]:
    """``facility="x"`` as the ``{name, value, matchType}`` objects the CRD takes."""
    out = []
    for text in texts:
        m = _MATCHER.match(text)
        if m is None:
            raise ValueError(f"not a matcher: {text!r}")
        value = re.sub(r"\\(.)", r"\1", m.group("value"))
        out.append({"name": m.group("name"), "value": value, "matchType": m.group("op")})
    return out


def _receiver(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r["name"]}
    if "webhook_configs" in r:
        out["webhookConfigs"] = [
            {"url": w["url"], "sendResolved": w["send_resolved"]} for w in r["webhook_configs"]
        ]
    if "pagerduty_configs" in r:
        out["pagerdutyConfigs"] = [
            {
                "routingKey": {"name": SECRET, "key": f"{r['name']}-routing-key"},
                "sendResolved": p["send_resolved"],
            }
            for p in r["pagerduty_configs"]
        ]
    return out


def alertmanager_config(
    routing: Routing,
    name: str = "vitalgate-slo",
    namespace: str | None = None,
    labels: Mapping[str, str] = {},
    time_scale: float = 1.0,
) -> dict[str, Any]:
    """``alertmanager.yml`` as an ``AlertmanagerConfig`` (the operator nests it under its own
    root route, matching the resource's namespace)."""
    am = build_alertmanager(routing, time_scale)
    route = am["route"]
    routes = []
    for r in route["routes"]:
        sub: dict[str, Any] = {"receiver": r["receiver"], "matchers": _matchers(r["matchers"])}
        for key, crd_key in (
            ("group_wait", "groupWait"),
            ("group_interval", "groupInterval"),
            ("repeat_interval", "repeatInterval"),
        ):
            if key in r:
                sub[crd_key] = r[key]
        if r.get("continue"):
            sub["continue"] = True
        routes.append(sub)
    return {
        "apiVersion": ROUTES_API,
        "kind": "AlertmanagerConfig",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "route": {
                "receiver": route["receiver"],
                "groupBy": route["group_by"],
                "groupWait": route["group_wait"],
                "groupInterval": route["group_interval"],
                "repeatInterval": route["repeat_interval"],
                "routes": routes,
            },
            "receivers": [_receiver(r) for r in am["receivers"]],
            "inhibitRules": [
                {
                    "sourceMatch": _matchers(rule["source_matchers"]),
                    "targetMatch": _matchers(rule["target_matchers"]),
                    "equal": rule["equal"],
                }
                for rule in am["inhibit_rules"]
            ],
        },
    }


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``--label key=value`` arguments; a clear error for anything else."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"([A-Za-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", key):
            raise ValueError(f"--label {pair!r}: expected key=value with a Kubernetes label key")
        if len(value) > 63 or not re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?", value):
            raise ValueError(f"--label {pair!r}: {value!r} is not a Kubernetes label value")
        out[key] = value
    return out
