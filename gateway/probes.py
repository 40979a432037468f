"""Synthetic probes: evidence of each upstream's health when no client is calling.

Each configured probe sends its request every ``interval``, once per listed facility (or once
as ``unknown``), to the gateway's own listener: it goes through the same parsing, routing,
attribution, upstream pool and sinks as a client's request, so it measures what a client
would see. The proxy knows it by the ``X-Vitalgate-Probe`` header carrying this gateway's
secret token (never forwarded; a client cannot forge it) and records it under the route
``probe {template}``: its own series in metrics, the access log and the store, so that an SLO
counts real traffic, probes or both (``sources:``).

Results are exported too: ``vitalgate_probe_requests_total{upstream, facility, result}``
(``success`` when the status is one of ``expect``, ``failure`` otherwise, ``error`` when no
answer came) and ``vitalgate_probe_success{upstream, facility}`` (the last result, 1 or 0).
With ``--workers`` only worker 0 probes (the kernel may hand its connection to any worker).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from core import conventions as names
from gateway.dataplane.proxy import PROBE_HEADER
from gateway.settings import Target

log = logging.getLogger("vitalgate.probes")

PROBE_TOKEN_ENV = "VITALGATE_PROBE_TOKEN"  # noqa: S105  (the variable's name)
"""The token the workers of one supervisor share, so any of them knows worker 0's probes."""


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            names.PROBE_REQUESTS,
            "Synthetic probe requests, by upstream, facility and result (success: an expected"
            " status; failure: another; error: no answer within the probe's timeout).",
            ("upstream", names.FACILITY, "result"),
            registry=registry,
        )
        self.success = Gauge(
            names.PROBE_SUCCESS,
            "The last probe's result per upstream and facility (1 success, 0 not).",
            ("upstream", names.FACILITY),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._seen: set[tuple[str, str]] = set()

    def result(self, t: Target, result: str) -> None:
        self.requests.labels(t.upstream, t.facility, result).inc()
        self.success.labels(t.upstream, t.facility).set(1 if result == "success" else 0)
        self._seen.add((t.upstream, t.facility))

    def keep_only(self, current: list[Target]) -> None:
        """After a reload: probes no longer configured lose their last-result series."""
        keys = {(t.upstream, t.facility) for t in current}
        for key in self._seen - keys:
            self.success.remove(*key)
        self._seen &= keys


class Prober:
    """Runs the probes of the config in force against this gateway's listener."""

    def __init__(self, metrics: ProbeMetrics, token: str, scheme: str, host: str, port: int) -> None:
        self._metrics = metrics
        self._token = token
        connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        authority = f"[{connect}]" if ":" in connect else connect
        self._base = f"{scheme}://{authority}:{port}"
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        # (https: its own listener, whatever certificate it has: nothing to verify)
        self._ssl: ssl.SSLContext | bool = scheme != "https"

    def start(self, found: list[Target]) -> None:
        """Start (or after a reload, restart) the probes of the config in force (its targets:
        ``gateway.settings.probe_targets``)."""
        self._stop_tasks()
        self._metrics.keep_only(found)
        if found and self._session is None:
            # Its own connections, closed after each probe: a probe also checks that the
            # listener accepts new connections.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(t)) for t in found]
        if found:
            log.info("%d probe targets", len(found), extra={"event": "probes_started", "targets": len(found)})

    async def _run(self, t: Target) -> None:
        # Spread over the interval: 200 facilities probed every 30 s are 7 requests a second,
        # not a burst of 200.
        await asyncio.sleep(random.uniform(0, t.interval_s))
        while True:
            await self.once(t)
            await asyncio.sleep(t.interval_s)

    async def once(self, t: Target) -> str:
        """One probe request; its result (also counted)."""
        assert self._session is not None
        headers = dict(t.headers)
        headers[PROBE_HEADER] = self._token
        try:
            async with self._session.request(
                t.method,
                self._base + t.path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=t.timeout_s),
                ssl=self._ssl,
            ) as response:
                await response.read()
                result = "success" if response.status in t.expect else "failure"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # No answer at all (the listener itself down or stalled): counted as error, and
            # the proxy records nothing of it, which the probe's own metrics make visible.
            log.warning(
                "probe %s for %s got no answer: %s",
                t.upstream,
                t.facility,
                exc,
                extra={"event": "probe_error", "upstream": t.upstream, "facility": t.facility},
            )
            result = "error"
        self._metrics.result(t, result)
        return result

    def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def stop(self) -> None:
        self._stop_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None
