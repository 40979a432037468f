"""Request lines are built by hand for speed; they must still be exact JSON with exact values."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway.dataplane.accesslog import RequestFormatter, rfc3339
from tests.support.outcomes import make_outcome


@pytest.mark.parametrize(
    ("duration_ms", "upstream_ms", "shown", "upstream_shown"),
    [
        (2.3456, 1.0, 2.346, 1.0),
        (0.0004, 0.0, 0.0, 0.0),
        (999.9996, None, 1000.0, None),
        (12345.6784, 12000.0005, 12345.678, 12000.001),
        (0.05, 0.0499, 0.05, 0.05),
    ],
)
def test_request_line_is_exact_json(
    duration_ms: float, upstream_ms: float | None, shown: float, upstream_shown: float | None
) -> None:
    fmt = RequestFormatter()
    ts = datetime(2026, 11, 27, 15, 4, 5, 987_000, tzinfo=UTC).timestamp() + 0.0004
    line = fmt(
        make_outcome(
            status=503,
            duration_s=duration_ms / 1000,
            started=ts,
            upstream_ms=upstream_ms,
            error_type='upstream "timeout"\n',
            sampled=True,
        )
    )
    record = json.loads(line)
    assert record == {
        "timestamp": rfc3339(ts),
        "event": "request",
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "trace_flags": "01",
        "facility": "st-marys",
        "service": "fhir",
        "http.route": "/fhir/Patient/{id}",
        "http.request.method": "GET",
        "http.response.status_code": 503,
        "duration_ms": shown,
        **({"upstream_duration_ms": upstream_shown} if upstream_shown is not None else {}),
        "error.type": 'upstream "timeout"\n',
    }
    assert record["timestamp"] == "2026-11-27T15:04:05.987Z"


def test_no_route_line_has_no_route_field() -> None:
    record = json.loads(
        RequestFormatter()(
            make_outcome("unknown", "none", "", "_OTHER", 404, 0.0001, started=0.5, trace_id="0" * 32)
        )
    )
    assert "http.route" not in record and record["timestamp"] == "1970-01-01T00:00:00.500Z"
    assert record["service"] == "none" and "upstream_duration_ms" not in record
