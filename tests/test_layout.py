"""The layout the README's table promises: which package may import which, and no import
cycle between modules (lazy imports inside functions included: a cycle hidden by one is still
a cycle); and what the compiled data plane loads when it runs, not only what its import lines
name (an import of the foundation could still pull in a library)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "slo", "gateway", "alerts", "dashboards", "reports", "vitalgate")
DATAPLANE = "gateway.dataplane"
# The audit trail is its own unit: it names patients, so what it may reach is kept small (the
# data plane's per-request record work, and the gateway's logging filter).
AUDIT = "gateway.audit"
MAY_IMPORT = {
    "core": set(),
    "slo": {"core"},
    DATAPLANE: {"core"},
    AUDIT: {"core", DATAPLANE, "gateway.diagnostics"},
    "gateway": {"core", "slo", DATAPLANE, AUDIT},
    "alerts": {"core", "slo"},
    "dashboards": {"core", "slo"},
    "reports": {"core", "slo"},
    "vitalgate": {*PACKAGES, DATAPLANE, AUDIT},
}
# The compiled request path takes plain settings and hands outcomes to sinks: no config schema,
# web framework or metrics library inside it.
NOT_IN_DATAPLANE = ("pydantic", "aiohttp", "prometheus_client", "multidict", "yaml")
# Nor, at run time, numerical or storage libraries: the store's writer thread and the SLO
# math run beside the data plane, fed by it.
NOT_LOADED_BY_DATAPLANE = (*NOT_IN_DATAPLANE, "numpy", "sqlite3", "_sqlite3")

# Imports the data-plane modules given as arguments, each from its .py even when a compiled
# extension sits beside it (a source-only finder ahead of the default ones) when the first
# argument is "source", and prints every module then loaded.
_LOADED = """
import importlib.machinery, json, sys

class SourceOnly:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if not name.startswith("gateway.dataplane.") or not path:
            return None
        loaders = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for folder in path:
            spec = importlib.machinery.FileFinder(folder, loaders).find_spec(name)
            if spec is not None:
                return spec
        return None

if sys.argv[1] == "source":
    sys.meta_path.insert(0, SourceOnly)
for name in sys.argv[2:]:
    __import__(name)
print(json.dumps({"loaded": sorted(sys.modules), "files": {
    n: getattr(sys.modules[n], "__file__", None) for n in sys.argv[2:]}}))
"""


def _unit(module: str) -> str:
    if module.startswith(DATAPLANE + "."):
        return DATAPLANE
    if module == AUDIT or module.startswith(AUDIT + "."):
        return AUDIT
    return module.split(".", maxsplit=1)[0]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports() -> dict[str, set[str]]:
    """Every module of the project, and every name it imports (at the top or in a function)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[name] = found
    return out


def _imports() -> dict[str, set[str]]:
    """The project's own import graph: module -> the project modules it imports."""
    everything = _all_imports()
    return {name: {t for t in found if t in everything} - {name} for name, found in everything.items()}


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = [
        (module, target)
        for module, targets in _imports().items()
        for target in targets
        if (src := _unit(module)) != (dst := _unit(target))
        and dst not in MAY_IMPORT[src]
        and target not in MAY_IMPORT[src]  # (a single module allowed by name)
    ]
    assert wrong == []


def test_the_data_plane_imports_no_schema_framework_or_metrics_library() -> None:
    wrong = [
        (module, target)
        for module, targets in _all_imports().items()
        if _unit(module) == DATAPLANE
        for target in targets
        if target.split(".")[0] in NOT_IN_DATAPLANE
    ]
    assert wrong == []
    assert any(_unit(m) == DATAPLANE for m in _all_imports())


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _loaded_by_dataplane(build: str) -> tuple[list[str], dict[str, str]]:
    """Every data-plane module imported in a fresh interpreter (``build``: "source", or
    "installed": compiled when the extensions are built); the modules loaded, and each data
    plane module's file."""
    modules = sorted(m for m in _all_imports() if _unit(m) == DATAPLANE)
    out = subprocess.run(
        [sys.executable, "-c", _LOADED, build, *modules], cwd=ROOT, capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    return found["loaded"], found["files"]


def _wrong_for_dataplane(loaded: list[str]) -> list[str]:
    """What the data plane must not load: a library named above, or a project module outside
    the foundation and the data plane."""
    return [
        name
        for name in loaded
        if name.split(".")[0] in NOT_LOADED_BY_DATAPLANE
        or (
            name.split(".")[0] in PACKAGES
            and name not in ("gateway", DATAPLANE)  # (namespace packages: the data plane's parents)
            and _unit(name) not in ("core", DATAPLANE)
        )
    ]


def test_the_data_plane_loads_only_the_foundation_and_itself_from_source() -> None:
    loaded, files = _loaded_by_dataplane("source")
    assert all(f.endswith(".py") for f in files.values()), files
    assert DATAPLANE + ".proxy" in loaded
    assert _wrong_for_dataplane(loaded) == []


def test_the_data_plane_loads_only_the_foundation_and_itself_as_installed() -> None:
    """As it runs: compiled (the test suite starts only on a current build), or pure."""
    loaded, _files = _loaded_by_dataplane("installed")
    assert DATAPLANE + ".proxy" in loaded
    assert _wrong_for_dataplane(loaded) == []
