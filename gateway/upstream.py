"""Clients for the clinical upstreams: one keep-alive connection pool per upstream.

The proxy talks to an upstream only through ``Upstream.send``, so the HTTP
client behind it can change without touching the request path. The client
changes nothing that passes through: no redirects followed, no decompression,
no default headers added.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import UpstreamConfig

# Headers aiohttp would add on its own; a proxy forwards the client's or none.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Upstream:
    def __init__(self, name: str, cfg: UpstreamConfig, ca_file: str | None) -> None:
        self.name = name
        self.base_url = cfg.url
        self._base_path = URL(cfg.url).raw_path.rstrip("/")
        url = URL(cfg.url)
        self.host = url.host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._origin = f"{url.scheme}://{url.raw_authority}"
        self._cfg = cfg
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(
            total=cfg.timeout.total, sock_connect=cfg.timeout.connect, sock_read=cfg.timeout.read
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self.base_url.startswith("https://"):
            ssl_ctx = ssl.create_default_context(cafile=self._ca_file)
        connector = aiohttp.TCPConnector(
            limit=self._cfg.max_connections,
            limit_per_host=self._cfg.max_connections,
            ssl=ssl_ctx,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, raw_path_qs: str) -> URL:
        return URL(self._origin + self._base_path + raw_path_qs, encoded=True)

    async def send(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str] | Mapping[str, str],
        body: aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Start the upstream request; the caller reads (and releases) the response."""
        assert self._session is not None, "upstream not started"
        return await self._session.request(
            method,
            self.url_for(raw_path_qs),
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )
