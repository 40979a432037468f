"""Publishing generated dashboards to Grafana over its HTTP API, with grafana-client.

Health check first; then a folder per facility plus a fleet folder, and each
dashboard upserted by uid, so running it again changes nothing. ``plan``
computes what would change (``--dry-run`` prints it); ``apply`` makes it so.
Errors say which token, which permission, which URL; server errors and
timeouts are retried with exponential backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import niquests
from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

from dashboards.build import GeneratedDashboard

T = TypeVar("T")
# Fields Grafana adds to a stored dashboard; they say nothing about its content.
_VOLATILE = ("id", "version", "iteration")
VIEW = 1


class PublishError(Exception):
    pass


@dataclass(frozen=True)
class Change:
    action: str  # "create" | "update" | "unchanged" | "grant"
    kind: str  # "folder" | "dashboard" | "permission"
    uid: str
    title: str

    def __str__(self) -> str:
        return f"{self.action:<9} {self.kind:<10} {self.uid:<40} {self.title}"


class Publisher:
    def __init__(
        self,
        url: str,
        token: str,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep

    def _call(self, what: str, fn: Callable[[], T], missing_ok: bool = False) -> T | None:
        """One API call: retried on 5xx, timeouts and refused connections; errors translated."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except GrafanaUnauthorizedError as exc:
                raise PublishError(
                    f"Grafana at {self.url} rejected the token (401) while trying to {what}: "
                    "set GRAFANA_TOKEN to a valid service account token"
                ) from exc
            except GrafanaServerError as exc:
                if attempt == self.retries:
                    raise PublishError(
                        f"Grafana at {self.url} kept failing ({exc.status_code}) while trying to {what}, "
                        f"{self.retries + 1} attempts: {exc.message}"
                    ) from exc
            except GrafanaClientError as exc:
                if exc.status_code == 404 and missing_ok:
                    return None
                if exc.status_code == 403:
                    raise PublishError(
                        f"the token in GRAFANA_TOKEN may not {what} at {self.url} (403): give its "
                        "service account the Editor role (folders:create, folders:write, dashboards:write), "
                        "or Admin to set folder permissions"
                    ) from exc
                if exc.status_code == 404:
                    raise PublishError(
                        f"not found (404) while trying to {what}: is {self.url} the Grafana base URL?"
                    ) from exc
                raise PublishError(f"Grafana refused to {what} ({exc.status_code}): {exc.message}") from exc
            except (GrafanaTimeoutError, niquests.exceptions.ConnectionError, GrafanaException) as exc:
                if attempt == self.retries:
                    raise PublishError(f"cannot reach Grafana at {self.url} to {what}: {exc}") from exc
            self.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def health(self) -> str:
        info = self._call("read its health (/api/frontend/settings)", self.api.health.check)
        version = info.get("version", "unknown") if isinstance(info, dict) else "unknown"
        return str(version)

    def plan(
        self, dashboards: Sequence[GeneratedDashboard], folder_teams: dict[str, str] | None = None
    ) -> list[Change]:
        changes: list[Change] = []
        folders: dict[str, str] = {}
        for d in dashboards:
            folders.setdefault(d.folder_uid, d.folder)
        for uid, title in sorted(folders.items()):
            got = self._call(f"read folder {uid}", partial(self.api.folder.get_folder, uid), missing_ok=True)
            if got is None:
                changes.append(Change("create", "folder", uid, title))
            elif got.get("title") != title:
                changes.append(Change("update", "folder", uid, title))
            else:
                changes.append(Change("unchanged", "folder", uid, title))
        for d in dashboards:
            got = self._call(
                f"read dashboard {d.uid}", partial(self.api.dashboard.get_dashboard, d.uid), missing_ok=True
            )
            if got is None:
                changes.append(Change("create", "dashboard", d.uid, d.title))
                continue
            stored = {k: v for k, v in got.get("dashboard", {}).items() if k not in _VOLATILE}
            ours = {k: v for k, v in d.model.items() if k not in _VOLATILE}
            same_folder = got.get("meta", {}).get("folderUid") == d.folder_uid
            action = "unchanged" if stored == ours and same_folder else "update"
            changes.append(Change(action, "dashboard", d.uid, d.title))
        for folder_uid, team in sorted((folder_teams or {}).items()):
            changes.append(Change("grant", "permission", folder_uid, f"team {team}: View"))
        return changes

    def apply(
        self,
        dashboards: Sequence[GeneratedDashboard],
        changes: Sequence[Change],
        folder_teams: dict[str, str] | None = None,
    ) -> None:
        by_uid = {d.uid: d for d in dashboards}
        for c in changes:
            if c.kind == "folder" and c.action == "create":
                self._call(
                    f"create folder {c.title!r}", partial(self.api.folder.create_folder, c.title, uid=c.uid)
                )
            elif c.kind == "folder" and c.action == "update":
                self._call(
                    f"rename folder {c.uid}",
                    partial(self.api.folder.update_folder, c.uid, title=c.title, overwrite=True),
                )
        for c in changes:
            if c.kind == "dashboard" and c.action in ("create", "update"):
                d = by_uid[c.uid]
                payload: dict[str, Any] = {
                    "dashboard": {**d.model, "id": None},
                    "folderUid": d.folder_uid,
                    "overwrite": True,
                    "message": "vitalgate dashboards publish",
                }
                self._call(f"save dashboard {d.uid}", partial(self.api.dashboard.update_dashboard, payload))
        for folder_uid, team in sorted((folder_teams or {}).items()):
            found = self._call(f"find team {team!r}", partial(self.api.teams.get_team_by_name, team)) or []
            if not found:
                raise PublishError(f"no Grafana team named {team!r} (for folder {folder_uid})")
            items = [{"teamId": found[0]["id"], "permission": VIEW}]
            self._call(
                f"set permissions of folder {folder_uid}",
                partial(self.api.folder.update_folder_permissions, folder_uid, items),
            )
