"""The latency page of a facility (``/ui/facilities/{id}/latency``) and its JSON form
(``/api/v1/latency/{id}``): per route template, slowest first, the request count, error
ratio, p50/p95/p99 and the trace ids of the slowest recent requests."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from reports.pages import CSS, SIGN_OUT
from slo.latency import WINDOWS_S, LatencyView, Percentile, RouteLatency, SlowRequest

ESTIMATE = (
    "histogram_quantile: the bucket holding the percentile, from the per-minute latency "
    "histograms, linearly interpolated inside it"
)
WINDOW_NAMES = {"1h": "last hour", "1d": "last day", "1w": "last week"}
LATENCY_CSS = """
.tabs a, .tabs b { display: inline-block; padding: 4px 10px; margin-right: 4px; border-radius: 3px; }
.tabs b { background: #1d2633; color: white; }
.tabs a { background: #e2e5ea; color: #1d2633; text-decoration: none; }
.bar { display: inline-block; height: 8px; background: #5b7fbf; border-radius: 2px; vertical-align: middle; }
td.route { white-space: normal; word-break: break-word; min-width: 9rem; }
small { display: block; font-size: 0.75rem; color: #777; }
code { font-size: 0.8rem; }
.note { font-size: 0.85rem; color: #555; }
@media (max-width: 640px) { .wide { display: none !important; } table.cards td.route { display: block; }
  table.cards td.route::before { display: none; } table.cards small { display: inline; margin-left: 6px; } }
"""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def _pctl(p: Percentile | None) -> str:
    """The estimate, with the bucket it certainly lies in beneath it."""
    if p is None:
        return '<span class="muted">-</span>'
    if p.above_last_bound:
        return f"&gt; {_ms(p.seconds)}<small>above the last bound</small>"
    return f"{_ms(p.seconds)}<small>{_bound(p.lower)}–{_bound(p.upper)} ms</small>"


def _bound(seconds: float) -> str:
    """A bucket bound in ms, as short as it is exact (5, 7.5, 250)."""
    return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".")


def _route_name(r: RouteLatency) -> str:
    return r.route or "(no route matched)"


def latency_page(facility_id: str, facility_name: str, view: LatencyView, session: bool = False) -> str:
    """``session``: the browser is signed in (the header offers "Sign out"; the JSON link
    opens with the same session)."""
    fid = escape(facility_id)
    tabs = "".join(
        f"<b>{escape(WINDOW_NAMES[w])}</b>"
        if w == view.window
        else f'<a href="/ui/facilities/{fid}/latency?window={w}">{escape(WINDOW_NAMES[w])}</a>'
        for w in WINDOWS_S
    )
    parts = [
        f'<p class="tabs">{tabs}</p>',
        f"<p>{_iso(view.start_s)} to {_iso(view.end_s)} (UTC). Routes slowest first (by p95). "
        f'<a href="/api/v1/latency/{fid}?window={escape(view.window)}">JSON</a></p>',
    ]
    if not view.routes:
        parts.append('<p class="muted">No requests in this window.</p>')
    else:
        worst = max((p.seconds for r in view.routes if (p := r.percentiles["p95"]) is not None), default=0.0)
        parts.append(
            "<table class=cards><tr><th class=l>Route</th><th>p50</th><th>p95</th><th>p99</th>"
            "<th>Requests</th><th>Errors</th><th class='l wide'>p95</th></tr>"
        )
        for i, r in enumerate(view.routes):
            p95 = r.percentiles["p95"]
            width = 0 if p95 is None or worst <= 0 else max(1, round(120 * p95.seconds / worst))
            err_cls = "bad" if r.error_ratio >= 0.05 else "warn" if r.errors else ""
            parts.append(
                f'<tr><td class="l route" data-label="Route"><a href="#r{i}">{escape(_route_name(r))}</a>'
                f"<small>{escape(r.service)}</small></td>"
                f'<td data-label="p50">{_pctl(r.percentiles["p50"])}</td>'
                f'<td data-label="p95">{_pctl(p95)}</td>'
                f'<td data-label="p99">{_pctl(r.percentiles["p99"])}</td>'
                f'<td data-label="Requests">{r.requests}</td>'
                f'<td data-label="Errors"><span class="{err_cls}">{100 * r.error_ratio:.2f}%</span>'
                f"<small>{r.errors}</small></td>"
                f'<td class="l wide"><span class="bar" style="width:{width}px"></span></td></tr>'
            )
        parts.append("</table>")
        parts.append("<h2>Slowest recent requests</h2>")
        parts.extend(_slowest(r, f"r{i}") for i, r in enumerate(view.routes))
    bounds = ", ".join(_ms(b) for b in view.bounds_s)
    parts.append(
        f'<p class="note">Percentiles are estimated as Prometheus\' histogram_quantile does: the '
        "bucket holding the percentile is found from the per-minute latency histograms the store "
        "keeps, and the value is interpolated linearly inside it (hover a value for its bucket). "
        f"Bucket bounds: {escape(bounds)}. Errors are responses with status 500 or above. Trace "
        "ids of sampled requests can be looked up in the tracing backend; every one is in the "
        "access log (field trace_id).</p>"
    )
    title = f"vitalgate: {facility_name}: latency by route"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}{LATENCY_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>"
        f'<a href="/ui">Fleet</a> · <a href="/ui/facilities/{fid}">{escape(facility_name)}</a>'
        f"{SIGN_OUT if session else ''}</header>"
        f"<main>{''.join(parts)}</main></body></html>"
    )


def _slowest(r: RouteLatency, anchor: str) -> str:
    head = f'<h3 id="{anchor}">{escape(_route_name(r))} <span class="muted">({escape(r.service)})</span></h3>'
    if not r.slowest:
        return head + '<p class="muted">No trace ids recorded in this window.</p>'
    rows = "".join(
        f'<tr><td data-label="Duration">{_ms(s.duration_s)}</td>'
        f'<td class=l data-label="Trace id"><code>{escape(s.trace_id)}</code>'
        f"{'' if s.sampled else '<small>not sampled: in the access log only</small>'}</td>"
        f'<td data-label="Request">{escape(s.method)} {s.status}</td>'
        f'<td class=l data-label="Start (UTC)">{_iso(s.started_s)}</td></tr>'
        for s in r.slowest
    )
    return (
        head + "<table class=cards><tr><th>Duration</th><th class=l>Trace id</th>"
        f"<th>Request</th><th class=l>Start (UTC)</th></tr>{rows}</table>"
    )


def _pjson(p: Percentile | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "seconds": round(p.seconds, 6),
        "bucket": [p.lower, None if p.above_last_bound else p.upper],
    }


def _sjson(s: SlowRequest) -> dict[str, Any]:
    return {
        "trace_id": s.trace_id,
        "duration_ms": round(s.duration_s * 1000, 3),
        "timestamp": _iso(s.started_s),
        "method": s.method,
        "status": s.status,
        "sampled": s.sampled,
    }


def latency_json(view: LatencyView) -> dict[str, Any]:
    """The JSON form: percentiles in seconds with the bucket ``[lower, upper]`` each lies in
    (upper null: above the highest bound)."""
    return {
        "facility": view.facility,
        "window": view.window,
        "from": _iso(view.start_s),
        "to": _iso(view.end_s),
        "estimate": ESTIMATE,
        "bounds_s": list(view.bounds_s),
        "routes": [
            {
                "service": r.service,
                "route": r.route,
                "requests": r.requests,
                "errors": r.errors,
                "error_ratio": round(r.error_ratio, 6),
                **{name: _pjson(p) for name, p in r.percentiles.items()},
                "slowest": [_sjson(s) for s in r.slowest],
            }
            for r in view.routes
        ],
    }
