"""Browser sessions on the admin listener: a token exchanged once for a cookie.

Threat model: the cookie must not be forgeable, must not outlive its sign-in, and must not be
usable from another site. So a session id is 256 random bits, held server-side in this
process's memory (keyed by its SHA-256, so the ids themselves are not kept); a session ends at
its ``max_age``, at sign-out, when its token is removed from the config (it names the token by
its hash and is resolved against the tokens in force at every request), and when the process
restarts. The table is bounded: a sign-in beyond ``max_count`` ends the session closest to its
end. The cookie is ``HttpOnly`` and ``SameSite=Strict``, and ``Secure`` (named with the
``__Host-`` prefix) when the browser reached the listener over TLS.

Non-goal: sharing sessions between replicas (a browser signs in on the replica it reaches).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import conventions as names

COOKIE = "vitalgate_session"
SECURE_COOKIE = "__Host-vitalgate_session"
"""The name under TLS: the ``__Host-`` prefix makes the browser refuse it unless it is
``Secure``, set by this host, for ``Path=/``."""


def cookie_name(secure: bool) -> str:
    return SECURE_COOKIE if secure else COOKIE


@dataclass(frozen=True)
class Session:
    token_sha256: str
    """The token it was opened with (its hash): the identity is that token's as configured now."""
    expires_s: float


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """The sessions of this admin process, and the counts of its sign-ins (a collector for its
    ``/metrics``)."""

    def __init__(self, max_age_s: float, max_count: int) -> None:
        self.max_age_s = max_age_s
        self.max_count = max_count
        self._by_key: dict[str, Session] = {}
        self.sign_ins = {"ok": 0, "refused": 0}

    def count_sign_in(self, result: str) -> None:
        """``ok`` or ``refused`` (``vitalgate_admin_sign_ins_total{result}``)."""
        self.sign_ins[result] = self.sign_ins.get(result, 0) + 1

    def configure(self, max_age_s: float, max_count: int) -> None:
        """After a reload: new sessions get the new age; the table shrinks at the next sign-in."""
        self.max_age_s = max_age_s
        self.max_count = max_count

    def __len__(self) -> int:
        return len(self._by_key)

    def open(self, token_sha256: str, now_s: float) -> str:
        """A new session for the token with that hash; returns its id (for the cookie only)."""
        self._expire(now_s)
        while len(self._by_key) >= self.max_count:
            oldest = min(self._by_key, key=lambda k: self._by_key[k].expires_s)
            del self._by_key[oldest]
        session_id = secrets.token_urlsafe(32)
        self._by_key[_key(session_id)] = Session(token_sha256, now_s + self.max_age_s)
        return session_id

    def find(self, session_id: str, now_s: float) -> Session | None:
        key = _key(session_id)
        found = self._by_key.get(key)
        if found is not None and found.expires_s <= now_s:
            del self._by_key[key]
            return None
        return found

    def close(self, session_id: str) -> Session | None:
        """Sign-out: the session ends now (None: there was none)."""
        return self._by_key.pop(_key(session_id), None)

    def _expire(self, now_s: float) -> None:
        for key in [k for k, s in self._by_key.items() if s.expires_s <= now_s]:
            del self._by_key[key]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            names.ADMIN_SIGN_INS.removesuffix("_total"),
            "Browser sign-ins on the admin listener, by result (refused: not a configured token).",
            labels=("result",),
        )
        for result, n in self.sign_ins.items():
            c.add_metric([result], n)
        yield c
        self._expire(time.time())
        yield GaugeMetricFamily(
            names.ADMIN_SESSIONS, "Browser sessions the admin listener holds.", value=len(self._by_key)
        )
