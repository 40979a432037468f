"""What the tests share, one module per job:

- ``waiting``: wait for a condition (``wait_until``), never for a fixed time.
- ``peers``: the real servers a test talks to (a clinical upstream, an OTLP receiver, an
  Alertmanager webhook), in the test's event loop or on a thread of their own.
- ``gateway``: a gateway config for tests, the gateway in process or as ``vitalgate serve``.
- ``services``: Debian's Prometheus, Alertmanager and VictoriaMetrics binaries on loopback ports.
- ``readers``: reading what a gateway produced (access log, metrics, HTTP answers).
- ``cli``: the ``vitalgate`` command as a user runs it.
- ``outcomes``: a finished request as the proxy hands it to its sinks.

The fixtures built on them live in the ``conftest.py`` next to the tests that use them.
"""
