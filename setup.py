"""Build hook: compile the request path to C with mypyc.

Everything else about the package lives in pyproject.toml. The modules below
run once or more per proxied request; compiled, the same typed Python executes
about 45% fewer instructions a request (README, Benchmarks: bench/instructions.py). The .py files stay the
source of truth: `VITALGATE_PURE_PYTHON=1 pip install .` skips the compiler,
and `vitalgate version` says which build is running.

A build that was asked to compile and cannot fails loudly rather than
installing a slower gateway without saying so.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The request path: one proxied request runs code from every one of these.
HOT_PATH = [
    "gateway/flow.py",
    "gateway/httpserver.py",
    "gateway/upstream.py",
    "gateway/proxy.py",
    "gateway/routes.py",
    "gateway/facility.py",
    "gateway/metrics.py",
    "gateway/accesslog.py",
    "gateway/tracing.py",
    "gateway/recorder.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("VITALGATE_PURE_PYTHON", "") not in ("", "0"):
        return []
    if not {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"} & set(sys.argv):
        return []  # metadata only (egg_info, dist_info, sdist): nothing to compile yet
    from mypyc.build import mypycify  # noqa: PLC0415  only a build that compiles needs mypy

    # No config file: the project's strict mypy settings (and its pydantic plugin) are for
    # `make typecheck`; an isolated build environment has none of the runtime dependencies,
    # so their types are read as Any here, which compiles to the same behaviour.
    options = [
        "--config-file=",
        "--explicit-package-bases",
        "--ignore-missing-imports",
        "--follow-imports=silent",
    ]
    return list(mypycify([*options, *HOT_PATH], opt_level="3", group_name="vitalgate_native"))


setup(ext_modules=ext_modules())
