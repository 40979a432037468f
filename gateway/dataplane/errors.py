"""How the gateway fails a request, as a typed tree.

    GatewayError                      a request the gateway itself could not complete
    ├── AuditUnavailable              503  error.type=audit_unavailable (audit ``durability:
    │                                      strict``: the record could not be made durable, so
    │                                      the response is not served)
    ├── SpoolError                    500  error.type=spool_error (a spooled part of a response
    │                                      could not be read back: the client connection is cut)
    ├── UpstreamPoolExhausted         503  error.type=upstream_pool_exhausted (every connection
    │                                      to the upstream busy past timeout.pool: the gateway's
    │                                      capacity, counted bad like any 5xx)
    ├── UpstreamError                 the upstream did not give a usable response
    │   ├── UpstreamTimeout           504  error.type=upstream_timeout
    │   └── UpstreamUnavailable       502
    │       ├── UpstreamConnectError      error.type=upstream_connect_error
    │       ├── UpstreamReset             error.type=upstream_reset
    │       ├── UpstreamTlsError          error.type=upstream_tls_error
    │       └── UpstreamProtocolError     error.type=upstream_protocol_error
    └── ClientError                   the client's fault: never charged to an upstream's SLO
        ├── ClientGone                499  error.type=client_disconnect (nginx's convention)
        ├── ClientBodyInvalid         400  error.type=invalid_body (malformed chunked framing)
        └── ClientTimeout             408  error.type=client_timeout (the body stalled)

The upstream client (``gateway.dataplane.upstream``) raises these types itself;
``translate`` maps what can still escape it (timeouts, OS-level connection
errors, TLS errors) onto them. The ``error.type`` value goes to the access log
and the span.
"""

from __future__ import annotations

import ssl
from typing import ClassVar


class GatewayError(Exception):
    # Class attributes of the type (ClassVar: compiled, a plain assignment would be an
    # instance attribute that a subclass's instances do not get).
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "gateway_error"


class UpstreamError(GatewayError):
    pass


class AuditUnavailable(GatewayError):
    status: ClassVar[int] = 503
    error_type: ClassVar[str] = "audit_unavailable"


class SpoolError(GatewayError):
    error_type: ClassVar[str] = "spool_error"


class UpstreamPoolExhausted(GatewayError):
    status: ClassVar[int] = 503
    error_type: ClassVar[str] = "upstream_pool_exhausted"


class UpstreamTimeout(UpstreamError):
    status: ClassVar[int] = 504
    error_type: ClassVar[str] = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status: ClassVar[int] = 502
    error_type: ClassVar[str] = "upstream_unavailable"


class UpstreamConnectError(UpstreamUnavailable):
    error_type: ClassVar[str] = "upstream_connect_error"


class UpstreamReset(UpstreamUnavailable):
    error_type: ClassVar[str] = "upstream_reset"


class UpstreamTlsError(UpstreamUnavailable):
    error_type: ClassVar[str] = "upstream_tls_error"


class UpstreamProtocolError(UpstreamUnavailable):
    error_type: ClassVar[str] = "upstream_protocol_error"


class ClientError(GatewayError):
    status: ClassVar[int] = 400
    error_type: ClassVar[str] = "bad_request"


class ClientGone(ClientError):
    status: ClassVar[int] = 499
    error_type: ClassVar[str] = "client_disconnect"


class ClientBodyInvalid(ClientError):
    error_type: ClassVar[str] = "invalid_body"


class ClientTimeout(ClientError):
    status: ClassVar[int] = 408
    error_type: ClassVar[str] = "client_timeout"


def translate(exc: BaseException) -> GatewayError:
    """The gateway error for an exception raised while talking to an upstream."""
    if isinstance(exc, GatewayError):
        return exc
    err: GatewayError
    if isinstance(exc, TimeoutError):
        err = UpstreamTimeout("upstream timed out")
    elif isinstance(exc, ssl.SSLError):
        err = UpstreamTlsError("TLS with upstream failed")
    elif isinstance(exc, ConnectionError):
        err = UpstreamReset("upstream closed the connection")
    else:
        err = UpstreamProtocolError(f"upstream request failed: {type(exc).__name__}")
    err.__cause__ = exc
    return err
