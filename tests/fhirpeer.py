"""A small FHIR server for tests, building absolute URLs the two ways real servers do.

``base="host"`` builds them from the request's ``Host`` (as most servers do by
default); ``base="fixed"`` from its own configured address, whatever the
request said (a server with a hard-coded base URL). It serves a paged Patient
search (``Bundle.link`` ``self``/``next`` and ``entry.fullUrl``), creates
(``Location``), reads, and batch/transaction Bundles posted to the base, whose
entries succeed or fail by their URL (``Patient/fail-404``, ``Patient/fail-500``); a search entry (``Patient?_count=5``) answers
with a nested searchset Bundle.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web

from vitalgate.peers import AppPeer

FHIR_JSON = "application/fhir+json"


class FhirPeer(AppPeer):
    def __init__(self, base: Literal["host", "fixed"], patients: int = 23) -> None:
        self.mode = base
        self.patients = [f"p{i}" for i in range(patients)]
        self.seen: list[dict[str, Any]] = []

    def base_url(self, request: web.Request) -> str:
        host = request.host if self.mode == "host" else f"127.0.0.1:{self.port}"
        return f"http://{host}/fhir"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fhir/Patient", self.search)
        app.router.add_post("/fhir/Patient", self.create)
        app.router.add_get("/fhir/Patient/{id}", self.read)
        app.router.add_post("/fhir/", self.batch)
        app.router.add_get("/fhir/plain", self.plain)
        return app

    def _seen(self, request: web.Request) -> None:
        self.seen.append({"path_qs": request.path_qs, "headers": dict(request.headers)})

    async def search(self, request: web.Request) -> web.Response:
        self._seen(request)
        count = int(request.query.get("_count", "10"))
        offset = int(request.query.get("_getpagesoffset", "0"))
        # A decimal as servers write it (1.50): passed on byte for byte, never re-encoded.
        text = json.dumps(self.searchset(self.base_url(request), count, offset))
        return web.Response(text=text.replace('"score": 1.5', '"score": 1.50'), content_type=FHIR_JSON)

    def searchset(self, base: str, count: int, offset: int) -> dict[str, Any]:
        """One page of the Patient search, its links and ``fullUrl``s under ``base``."""
        page = self.patients[offset : offset + count]
        links = [{"relation": "self", "url": f"{base}/Patient?_count={count}&_getpagesoffset={offset}"}]
        if offset + count < len(self.patients):
            links.append(
                {"relation": "next", "url": f"{base}/Patient?_count={count}&_getpagesoffset={offset + count}"}
            )
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(self.patients),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/Patient/{pid}",
                    "resource": {"resourceType": "Patient", "id": pid, "multipleBirthInteger": 1},
                    "search": {"mode": "match", "score": 1.50},
                }
                for pid in page
            ],
        }

    async def create(self, request: web.Request) -> web.Response:
        self._seen(request)
        await request.read()
        loc = f"{self.base_url(request)}/Patient/new1/_history/1"
        return web.Response(
            status=201,
            text=json.dumps({"resourceType": "Patient", "id": "new1"}),
            content_type=FHIR_JSON,
            headers={"Location": loc, "Content-Location": loc},
        )

    async def read(self, request: web.Request) -> web.Response:
        self._seen(request)
        pid = request.match_info["id"]
        return web.Response(
            text=json.dumps({"resourceType": "Patient", "id": pid}),
            content_type=FHIR_JSON,
            headers={"Content-Location": f"{self.base_url(request)}/Patient/{pid}/_history/1"},
        )

    async def plain(self, request: web.Request) -> web.Response:
        """A non-Bundle resource that names the server's own address (not rewritten: counted)."""
        self._seen(request)
        doc = {"resourceType": "Binary", "data": "", "url": f"{self.base_url(request)}/Binary/1"}
        return web.Response(text=json.dumps(doc), content_type=FHIR_JSON)

    async def batch(self, request: web.Request) -> web.Response:
        self._seen(request)
        doc = await request.json()
        base = self.base_url(request)
        entries: list[dict[str, Any]] = []
        for entry in doc.get("entry", []):
            url = entry["request"]["url"]
            if "fail-404" in url:
                entries.append({"response": {"status": "404 Not Found"}})
            elif "fail-500" in url:
                entries.append({"response": {"status": "500 Internal Server Error"}})
            elif url.startswith("Patient?"):
                # A search in a batch: its searchset Bundle is the entry's resource (in a
                # transaction, as this server's quirk, the response's outcome), paged like any.
                count = int(url.partition("_count=")[2].partition("&")[0] or "10")
                inner = self.searchset(base, count, 0)
                if doc.get("type") == "transaction":
                    entries.append({"response": {"status": "200 OK", "outcome": inner}})
                else:
                    entries.append({"resource": inner, "response": {"status": "200 OK"}})
            elif entry["request"]["method"] == "POST":
                entries.append({"response": {"status": "201 Created", "location": f"{base}/Patient/n1"}})
            else:
                entries.append({"fullUrl": f"{base}/{url}", "response": {"status": "200 OK"}})
        kind = "transaction-response" if doc.get("type") == "transaction" else "batch-response"
        return web.Response(
            text=json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}),
            content_type=FHIR_JSON,
        )


def batch(*more: dict[str, Any]) -> dict[str, Any]:
    """A batch whose entries this peer answers 200, 201, 404 and 500 (twice), then ``more``."""
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/fail-404"}},
            {"request": {"method": "GET", "url": "Patient/fail-500"}},
            {"request": {"method": "DELETE", "url": "Patient/fail-500"}},
            *more,
        ],
    }
