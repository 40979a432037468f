"""Which build of the request path is running: compiled by mypyc, or pure Python.

``setup.py`` compiles the request-path modules (``HOT_PATH``: every module of
``gateway/dataplane/``) to C extensions next to their sources. Python imports an
extension in preference to the .py beside it, so a source edited after the build
would silently not run: this module says so, for ``vitalgate version``, the
start-up line and the tests.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES

DATAPLANE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataplane")
"""The data plane: every module in this folder is compiled, and nothing outside it."""


def hot_path(folder: str = DATAPLANE) -> tuple[str, ...]:
    """The modules setup.py compiles: every ``.py`` of the data-plane folder."""
    stems = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    return tuple(f"gateway.dataplane.{stem}" for stem in stems)


HOT_PATH = hot_path()

# C sources setup.py builds beside them (module, source): counted with the compiled modules.
EXTENSIONS = (("gateway.dataplane._memscan", "gateway/dataplane/_memscan.c"),)


@dataclass(frozen=True)
class Build:
    compiled: tuple[str, ...]  # modules running as C extensions
    pure: tuple[str, ...]  # modules running from their .py
    stale: tuple[str, ...]  # compiled modules whose .py changed after the build

    @property
    def kind(self) -> str:
        if not self.compiled:
            return "pure Python"
        if self.pure:
            total = len(HOT_PATH) + len(EXTENSIONS)
            return f"partly compiled ({len(self.compiled)} of {total} request-path modules)"
        return "compiled (mypyc)"

    def describe(self) -> str:
        text = f"request path {self.kind}"
        if self.stale:
            text += (
                f"; STALE: {', '.join(self.stale)} changed after compiling, the old code is running"
                " (reinstall: make install, or pip install -e .)"
            )
        return text


def build() -> Build:
    compiled: list[str] = []
    pure: list[str] = []
    stale: list[str] = []
    for name in HOT_PATH:
        module = importlib.import_module(name)
        path = module.__file__ or ""
        if not path.endswith(tuple(EXTENSION_SUFFIXES)):
            pure.append(name)
            continue
        compiled.append(name)
        source = os.path.join(os.path.dirname(path), name.rsplit(".", 1)[1] + ".py")
        if os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(path):
            stale.append(name)
    # Looked for in this checkout's folder: ``gateway`` is a namespace package, so an import
    # could find an extension in another checkout on the path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, c_source in EXTENSIONS:
        stem = os.path.join(DATAPLANE, name.rsplit(".", 1)[1])
        built = next((stem + s for s in EXTENSION_SUFFIXES if os.path.exists(stem + s)), None)
        if built is None:
            pure.append(name)
            continue
        compiled.append(name)
        source = os.path.join(root, c_source)
        if os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(built):
            stale.append(name)
    return Build(tuple(compiled), tuple(pure), tuple(stale))
