"""Build hook: compile the request path to C with mypyc.

Everything else about the package lives in pyproject.toml. The modules of
gateway/dataplane/ (gateway/native.py's HOT_PATH) run once or more per proxied request; compiled,
the same typed Python executes about 45% fewer instructions a request
(README, Benchmarks: bench/instructions.py). The .py files stay the source of
truth: `VITALGATE_PURE_PYTHON=1 pip install .` skips the compiler, and
`vitalgate version` says which build is running.

A build that was asked to compile and cannot fails loudly rather than
installing a slower gateway without saying so.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

# The request path: every module of gateway/dataplane/ (one proxied request runs code from
# each), as gateway/native.py lists it for `vitalgate version`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gateway.native import HOT_PATH

HOT_PATH_FILES = [name.replace(".", "/") + ".py" for name in HOT_PATH]


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
    compiled = list(mypycify([*options, *HOT_PATH_FILES], opt_level="3", group_name="vitalgate_native"))
    # The response-body byte search (gateway/dataplane/memscan.py says why).
    compiled.append(
        Extension("gateway.dataplane._memscan", ["gateway/dataplane/_memscan.c"], extra_compile_args=["-O2"])
    )
    return compiled


setup(ext_modules=ext_modules())
