"""How the gateway fails a request, as a typed tree.

    GatewayError                      a request the gateway itself could not complete
    ├── UpstreamError                 the upstream did not give a usable response
    │   ├── UpstreamTimeout           504  error.type=upstream_timeout
    │   └── UpstreamUnavailable       502
    │       ├── UpstreamConnectError      error.type=upstream_connect_error
    │       ├── UpstreamReset             error.type=upstream_reset
    │       ├── UpstreamTlsError          error.type=upstream_tls_error
    │       └── UpstreamProtocolError     error.type=upstream_protocol_error
    └── ClientGone                    499  error.type=client_disconnect (nginx's convention)

aiohttp's client errors are translated once, in ``translate``, into the most
specific type; the ``error.type`` value goes to the access log and the span.
"""

from __future__ import annotations

import asyncio

import aiohttp


class GatewayError(Exception):
    status = 500
    error_type = "gateway_error"


class UpstreamError(GatewayError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status = 502
    error_type = "upstream_unavailable"


class UpstreamConnectError(UpstreamUnavailable):
    error_type = "upstream_connect_error"


class UpstreamReset(UpstreamUnavailable):
    error_type = "upstream_reset"


class UpstreamTlsError(UpstreamUnavailable):
    error_type = "upstream_tls_error"


class UpstreamProtocolError(UpstreamUnavailable):
    error_type = "upstream_protocol_error"


class ClientGone(GatewayError):
    status = 499
    error_type = "client_disconnect"


def translate(exc: BaseException) -> GatewayError:
    """The gateway error for an exception raised while talking to an upstream."""
    if isinstance(exc, GatewayError):
        return exc
    err: GatewayError
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        err = UpstreamTimeout("upstream timed out")
    elif isinstance(exc, aiohttp.ClientSSLError):
        err = UpstreamTlsError("TLS handshake with upstream failed")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        err = UpstreamConnectError("cannot connect to upstream")
    elif isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        err = UpstreamReset("upstream closed the connection")
    elif isinstance(exc, aiohttp.ClientResponseError):
        err = UpstreamProtocolError("upstream sent an invalid response")
    else:
        err = UpstreamProtocolError(f"upstream request failed: {type(exc).__name__}")
    err.__cause__ = exc
    return err
