"""A fake of the documented Grafana HTTP API, for testing the publisher (no Grafana server
can be installed here). It follows the documented contract: bearer-token auth (401 for
an unknown token, 403 for a viewer's writes), folders (``/api/folders``; 409 for a
duplicate uid), dashboards (``POST /api/dashboards/db`` with ``dashboard``,
``folderUid``, ``overwrite``; ``GET /api/dashboards/uid/:uid``), search, teams and
folder permissions, health via ``/api/frontend/settings``. It validates payloads as
Grafana does and can be told to fail the next requests with a status."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

EDITOR, VIEWER = "editor-token", "viewer-token"


class FakeGrafana:
    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.permissions: dict[str, list[dict[str, Any]]] = {}
        self.teams = [{"id": 7, "name": "riverside-account-managers"}]
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[int] = []
        self._next_id = 1

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/api/frontend/settings", self._settings)
        r.add_get("/api/health", self._health)
        r.add_get("/api/folders/{uid}", self._get_folder)
        r.add_post("/api/folders", self._create_folder)
        r.add_put("/api/folders/{uid}", self._update_folder)
        r.add_post("/api/folders/{uid}/permissions", self._set_permissions)
        r.add_post("/api/dashboards/db", self._save_dashboard)
        r.add_get("/api/dashboards/uid/{uid}", self._get_dashboard)
        r.add_get("/api/search", self._search)
        r.add_get("/api/teams/search", self._teams)
        return app

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "PUT", "DELETE")]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response({"message": "injected failure"}, status=status)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if request.path != "/api/health" and token not in (EDITOR, VIEWER):
            return web.json_response({"message": "Unauthorized"}, status=401)
        if token == VIEWER and request.method != "GET":
            return web.json_response(
                {"message": "You'll need additional permissions to perform this action."}, status=403
            )
        result: web.StreamResponse = await handler(request)
        return result

    async def _settings(self, request: web.Request) -> web.Response:
        return web.json_response({"buildInfo": {"version": "11.3.0", "commit": "fake"}})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"database": "ok", "version": "11.3.0"})

    async def _get_folder(self, request: web.Request) -> web.Response:
        folder = self.folders.get(request.match_info["uid"])
        if folder is None:
            return web.json_response({"message": "folder not found", "status": "not-found"}, status=404)
        return web.json_response(folder)

    async def _create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        title, uid = body.get("title"), body.get("uid")
        if not isinstance(title, str) or not title.strip():
            return web.json_response({"message": "folder title cannot be empty"}, status=400)
        if uid is not None and (not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid)):
            return web.json_response(
                {"message": "uid contains illegal characters or is too long"}, status=400
            )
        if uid in self.folders:
            return web.json_response({"message": "a folder with the same uid already exists"}, status=409)
        if any(f["title"] == title for f in self.folders.values()):
            return web.json_response({"message": "a folder with that name already exists"}, status=409)
        folder = {"id": self._id(), "uid": uid, "title": title, "version": 1}
        self.folders[uid] = folder
        return web.json_response(folder)

    async def _update_folder(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        if uid not in self.folders:
            return web.json_response({"message": "folder not found"}, status=404)
        body = await request.json()
        self.folders[uid]["title"] = body["title"]
        self.folders[uid]["version"] += 1
        return web.json_response(self.folders[uid])

    async def _set_permissions(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        if uid not in self.folders:
            return web.json_response({"message": "folder not found"}, status=404)
        body = await request.json()
        items = body.get("items")
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and i.get("permission") in (1, 2, 4) for i in items
        ):
            return web.json_response({"message": "bad permission items"}, status=400)
        self.permissions[uid] = items
        return web.json_response({"message": "Folder permissions updated"})

    async def _save_dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        dash = body.get("dashboard")
        if not isinstance(dash, dict):
            return web.json_response({"message": "bad request data: dashboard is required"}, status=400)
        uid, title = dash.get("uid"), dash.get("title")
        if not isinstance(title, str) or not title:
            return web.json_response({"message": "Dashboard title cannot be empty"}, status=400)
        if not isinstance(uid, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid):
            return web.json_response(
                {"message": "uid contains illegal characters or is too long"}, status=400
            )
        if not isinstance(dash.get("panels"), list) or not isinstance(dash.get("schemaVersion"), int):
            return web.json_response({"message": "invalid dashboard model"}, status=400)
        folder_uid = body.get("folderUid")
        if folder_uid and folder_uid not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        existing = self.dashboards.get(uid)
        if existing is not None and not body.get("overwrite"):
            return web.json_response(
                {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"},
                status=412,
            )
        version = existing["dashboard"]["version"] + 1 if existing else 1
        did = existing["dashboard"]["id"] if existing else self._id()
        stored = {**dash, "id": did, "version": version}
        self.dashboards[uid] = {"dashboard": stored, "meta": {"folderUid": folder_uid or "", "slug": uid}}
        return web.json_response(
            {"id": did, "uid": uid, "url": f"/d/{uid}", "status": "success", "version": version}
        )

    async def _get_dashboard(self, request: web.Request) -> web.Response:
        found = self.dashboards.get(request.match_info["uid"])
        if found is None:
            return web.json_response({"message": "Dashboard not found"}, status=404)
        return web.json_response(found)

    async def _search(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "uid": u,
                    "title": d["dashboard"]["title"],
                    "type": "dash-db",
                    "folderUid": d["meta"]["folderUid"],
                }
                for u, d in sorted(self.dashboards.items())
            ]
        )

    async def _teams(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        found = [t for t in self.teams if name is None or t["name"] == name]
        return web.json_response({"totalCount": len(found), "teams": found, "page": 1, "perPage": 1000})

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id
